"""The schedules the simulation is run over, as Hypothesis strategies: estates of one to four
tenancies, rates, timeouts and latencies that force hand-offs, batch sizes, queues that give
up after two deliveries, killed containers, CTM errors, schedules fired twice and pipeline
requests (key lists with a key CCKM does not know, selectors) arriving mid-run, odd answers
(a key gone, one OCI refuses, a vault busy) and CTM listing in each way it may (sort refused or
ignored, pages capped).

Every scenario's function timeout leaves time for one CTM call after the margin: a shorter
one is refused at cold start (docs/reference.md 4.3), which ``test_simulation`` shows apart.
"""

from __future__ import annotations

from hypothesis import strategies as st

from devkit.sim.world import LISTINGS, Pipeline, Scenario

CTM_TIMEOUTS = (2.0, 5.0, 20.0)


@st.composite
def scenarios(draw: st.DrawFn, most_keys: int = 40) -> Scenario:
    tenancies = tuple(draw(st.lists(st.integers(1, most_keys), min_size=1, max_size=4)))
    ctm_timeout = draw(st.sampled_from(CTM_TIMEOUTS))
    needed = 3 * ctm_timeout + 5  # the margin, then one call
    function_timeout = needed + draw(st.sampled_from((1.0, 10.0, 60.0, 300.0)))
    pipeline = draw(
        st.lists(
            st.builds(
                Pipeline,
                at=st.floats(0, 120).map(round),
                tenancy=st.integers(0, len(tenancies) - 1),
                keys=st.integers(0, 5),
            ),
            max_size=2,
        )
    )
    rate = draw(st.sampled_from((0.5, 1.0, 2.0, 4.0)))
    latency = draw(st.sampled_from((0.05, 0.2, 1.0)))
    slow = rate < 2 or latency > 0.2
    return Scenario(
        tenancies=tenancies,
        rate=rate,
        ctm_timeout=ctm_timeout,
        function_timeout=function_timeout,
        latency=latency,
        tenancy_batch_size=draw(st.sampled_from((None, 1, 3))),
        max_receive_count=draw(st.integers(2, 5)),
        chunk_size=draw(st.sampled_from((5, 25, 100))),
        concurrency=draw(st.sampled_from((1, 4, 64))),
        kill_rate=draw(st.sampled_from((0.0, 0.1, 0.3))),
        error_rate=draw(st.sampled_from((0.0, 0.05, 0.2))),
        # JWTs of 2 s only where a call and a slot fit in one (the measured case:
        # 0.1-0.2 s calls at 2-5/s); a JWT outlived by every wait cannot refresh anything.
        token_lifetime=draw(st.sampled_from((60.0, 300.0) if slow else (2.0, 60.0, 300.0))),
        odd=draw(st.booleans()),
        listing=draw(st.sampled_from(sorted(LISTINGS))),
        schedules=draw(st.sampled_from(((0.0,), (0.0, 90.0)))),
        pipeline=tuple(pipeline),
        warm=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
