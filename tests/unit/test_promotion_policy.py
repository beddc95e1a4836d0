from overlay.attach import ReachabilityResult
from overlay.client.promotion import PromotionPolicy, Step

REACHABLE = ReachabilityResult(1, "198.18.0.9", True, True)
UDP_BLOCKED = ReachabilityResult(1, "198.18.0.9", True, False)


def decide(policy: PromotionPolicy, **kw) -> Step:
    args = {"uptime_s": 0.0, "attached": True, "last_check": None, "since_check_s": 0.0}
    return policy.decide(**{**args, **kw})


def test_opted_out_client_checks_its_reachability_but_never_promotes():
    policy = PromotionPolicy(enabled=False, promote_after_s=0, recheck_s=600)
    assert decide(policy, attached=False) is Step.WAIT
    assert decide(policy) is Step.CHECK  # what its invites say as ``reachable``
    assert decide(policy, uptime_s=10**6, last_check=REACHABLE) is Step.WAIT
    assert decide(policy, last_check=REACHABLE, since_check_s=600) is Step.CHECK


def test_checks_once_attached_then_promotes_after_uptime_when_reachable_both_ways():
    policy = PromotionPolicy(enabled=True, promote_after_s=600, recheck_s=600)
    assert decide(policy, attached=False) is Step.WAIT
    assert decide(policy) is Step.CHECK
    assert decide(policy, last_check=REACHABLE, uptime_s=10) is Step.WAIT
    assert decide(policy, last_check=REACHABLE, uptime_s=600) is Step.PROMOTE


def test_unreachable_client_waits_and_rechecks_later():
    policy = PromotionPolicy(enabled=True, promote_after_s=0, recheck_s=600)
    assert decide(policy, last_check=UDP_BLOCKED, uptime_s=10**4, since_check_s=10) is Step.WAIT
    assert decide(policy, last_check=UDP_BLOCKED, since_check_s=600) is Step.CHECK
