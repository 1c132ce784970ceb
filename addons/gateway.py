"""The pangate gateway: `mitmdump -s addons/gateway.py`.

The order is the data path: identify, authorize, check the resolved address
and what leaves, hold what needs a person, inject the credential, mask what
comes back, record it. `chain` puts the Guard first (it refuses traffic while
any stage is not ready) and runs the stages' flow hooks in this order, as one
addon; a flow one stage refuses goes no further than the stages that record it.
"""

from pangate.approval.addon import ApprovalHold
from pangate.audit.addon import Audit
from pangate.authorize.addon import AddressGuard, Authorize
from pangate.chain.datapath import chain
from pangate.control.addon import Control
from pangate.credentials.addon import Credentials
from pangate.dlp.addon import Dlp
from pangate.exchange.addon import Exchange
from pangate.export.addon import Export
from pangate.identity.addon import Identify, Revocations
from pangate.masking.addon import ResponseMasking
from pangate.monitor.addon import Monitor
from pangate.policy.addon import PolicyStore
from pangate.recording.addon import Recorder

store = PolicyStore()
revocations = Revocations()  # `pangate revoke` writes the list it watches
approval = ApprovalHold(store)
credentials = Credentials(store)
audit = Audit(store)

addons = chain(
    store,
    revocations,
    Identify(store, revocations),
    Exchange(store, revocations),  # off unless pangate_exchange_listen: SAML/OIDC in, pangate token out
    Authorize(store),
    AddressGuard(store),  # resolves only allowed destinations, pins the checked address
    Dlp(store),  # needs the decided destination; before any credential is added
    approval,  # holds high-risk requests before the credential is added
    Control(store, approval),  # `pangate approve|deny` reach the holds here
    credentials,
    ResponseMasking(store, credentials),  # also redacts an echoed credential in streamed bodies
    audit,
    Recorder(store, credentials),  # after Audit: saves what the client finally got
    Monitor(store, audit),  # detectors, alerts and metrics on finished flows; never refuses one
    Export(audit),  # ships durable audit records to SIEM collectors, off the data path
)
