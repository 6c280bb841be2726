"""The benchmarks call the API as the bootstrapped admin, without rate limits.

Every route needs credentials; the benched conversations belong to the admin, whose
user id follows from its name.
"""

from tests.support import ADMIN_KEY
from threadlog.domain.identity import user_id_for
from threadlog.infra.auth import ADMIN_USERNAME
from threadlog.infra.settings import Settings

OWNER = str(user_id_for(ADMIN_USERNAME))


def served(settings: Settings) -> Settings:
    """`settings` for a benched server: the test admin's key, limits off (a benchmark
    makes thousands of requests a minute from one address on purpose)."""
    return settings.replace(
        bootstrap_admin_key=ADMIN_KEY, rate_limit_per_key=0, rate_limit_per_ip=0
    )
