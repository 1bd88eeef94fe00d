# edgenas before any test module imports torch: its import sets OMP_WAIT_POLICY=PASSIVE (edgenas/__init__.py), which
# libgomp reads when torch loads. With spinning OpenMP threads, torch in a pytest worker beside the other worker (and
# the subprocesses tests start) ran many times slower: one BN recalibration of a tiny subnet took 10 s, not 1 s.
import edgenas  # noqa: F401

pytest_plugins = ["shared_work", "testbed_fixtures", "scheduling"]
