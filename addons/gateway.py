"""The pangate gateway: `mitmdump -s addons/gateway.py`.

The order is the data path: identify, authorize, check the resolved address
and what leaves, hold what needs a person, inject the credential, mask what
comes back, record it. Guard (added first by `chain`) refuses traffic while
any of them is not ready.
"""

from pangate.approval.addon import Approval
from pangate.audit.addon import Audit
from pangate.authorize.addon import Authorize
from pangate.control.addon import Control
from pangate.credentials.addon import Credentials
from pangate.dlp.addon import Dlp
from pangate.exchange.addon import Exchange
from pangate.export.addon import Export
from pangate.chain.guard import chain
from pangate.identity.addon import Identity
from pangate.masking.addon import Masking
from pangate.policy.addon import PolicyStore
from pangate.recording.addon import Recorder
from pangate.authorize.addon import AddressGuard
from pangate.identity.addon import Revocations

store = PolicyStore()
revocations = Revocations()  # `pangate revoke` writes the list it watches
approval = Approval(store)
credentials = Credentials(store)
audit = Audit(store)

addons = chain(
    store,
    revocations,
    Identity(store, revocations),
    Exchange(store, revocations),  # off unless pangate_exchange_listen: SAML/OIDC in, pangate token out
    Authorize(store),
    AddressGuard(store),  # resolves only allowed destinations, pins the checked address
    Dlp(store),  # needs the decided destination; before any credential is added
    approval,  # holds high-risk requests before the credential is added
    Control(store, approval),  # `pangate approve|deny` reach the holds here
    credentials,
    Masking(store, credentials),  # also redacts an echoed credential in streamed bodies
    audit,
    Recorder(store, credentials),  # after Audit: saves what the client finally got
    Export(audit),  # ships durable audit records to SIEM collectors, off the data path
)
