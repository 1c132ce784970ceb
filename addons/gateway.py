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
from pangate.chain.recordahead import RecordAhead
from pangate.chain.upstream import Upstream
from pangate.control.addon import Control
from pangate.credentials.addon import Credentials
from pangate.dlp.addon import Dlp
from pangate.exchange.addon import Exchange
from pangate.export.addon import Export
from pangate.health.addon import Health
from pangate.identity.addon import Identify, Revocations
from pangate.masking.addon import ResponseMasking
from pangate.monitor.addon import Monitor
from pangate.policy.addon import PolicyStore
from pangate.proxytls.addon import ProxyTls
from pangate.recording.addon import Recorder
from pangate.state.addon import SharedState

store = PolicyStore()
state = SharedState()  # pangate_state: in process, or Redis shared by every instance
revocations = Revocations(state)  # `pangate revoke` writes the list it watches (and, shared, Redis)
approval = ApprovalHold(store, state)
credentials = Credentials(store)
audit = Audit(store)
stages = [
    store,
    state,
    revocations,
    ProxyTls(),  # the proxy hop itself over TLS; plain proxy requests refused when required
    Identify(store, revocations, state),
    Exchange(store, revocations),  # off unless pangate_exchange_listen: SAML/OIDC in, pangate token out
    Authorize(store),
    AddressGuard(store),  # resolves only allowed destinations, pins the checked address
    Dlp(store),  # needs the decided destination; before any credential is added
    approval,  # holds high-risk requests before the credential is added
    Control(store, approval),  # `pangate approve|deny` reach the holds here
    credentials,
    RecordAhead(audit),  # strict audit: a durable intent record before anything is forwarded
    Upstream(),  # bounds the waits for the upstream (after holds); its failures answered as pangate's JSON
    ResponseMasking(store, credentials),  # also redacts an echoed credential in streamed bodies
    audit,
    Recorder(store, credentials),  # after Audit: saves what the client finally got
    Monitor(store, audit),  # detectors, alerts and metrics on finished flows; never refuses one
    Export(audit),  # ships durable audit records to SIEM collectors, off the data path
]
addons = chain(*stages, Health(store, stages, state))  # /healthz, /readyz from the stages' health
