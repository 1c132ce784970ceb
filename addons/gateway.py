"""The pangate gateway: `mitmdump -s addons/gateway.py`.

The order is the data path: identify, authorize, inject the credential, mask
what comes back, record it. Guard (added first by `chain`) refuses traffic
while any of them is not ready.
"""

from pangate.audit import Audit
from pangate.authorize import Authorize
from pangate.credentials import Credentials
from pangate.guard import chain
from pangate.identity import Identity
from pangate.masking import Masking
from pangate.policystore import PolicyStore

store = PolicyStore()

addons = chain(
    store,
    Identity(store),
    Authorize(store),
    Credentials(store),
    Masking(store),
    Audit(store),
)
