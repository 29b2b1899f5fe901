import time, logging
from tests.operator.conftest import policy

async def test_timing(kubectl, start_operator, caplog):
    caplog.set_level(logging.DEBUG, logger="kopf")
    t = time.monotonic()
    cm = start_operator()
    await cm.__aenter__()
    a = time.monotonic() - t
    await kubectl.apply(policy(dailyLimit=5))
    await kubectl.wait_ready("default", reason="Reconciled")
    b = time.monotonic() - t
    await cm.__aexit__(None, None, None)
    c = time.monotonic() - t
    print(f"TIMING start={a:.2f} ready={b:.2f} stop={c:.2f}")
    if c - b > 1:
        for r in caplog.records[-40:]:
            print("LOG", r.created - t + 0, r.name, r.getMessage()[:150])
