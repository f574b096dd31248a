"""The upstream vgi-rpc conformance pytest suite, collected against ``$VGI_TEST_URL``.

``_pytest_suite`` re-exports every conformance group (adversarial HTTP, request
limits, secondary protocol, identity, grants, external locations, ...), so one
star-import collects them all; ``conftest.py`` supplies the fixtures.
"""

from vgi_rpc.conformance._pytest_suite import *  # noqa: F401,F403
