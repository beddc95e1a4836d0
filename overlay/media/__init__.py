"""Media between two clients: signalling, candidate paths (direct TCP, UDP hole punching with
QUIC on top, relay), end-to-end encryption, and file transfer."""
