import sys

from overlay.cli.main import main

sys.exit(main())
