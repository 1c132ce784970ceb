"""The pangate gateway: `mitmdump -s addons/gateway.py`.

The order is the data path: identify, authorize, check the resolved address
and what leaves, hold what needs a person, inject the credential, mask what
comes back, record it. `chain` puts the Guard first (it refuses traffic while
any stage is not ready) and runs the stages' flow hooks in this order, as one
addon; a flow one stage refuses goes no further than the stages that record it.
"""

import asyncio
import logging

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


class _ClosedClientFilter:
    """Drops asyncio's "Exception in callback StreamReaderProtocol..." CancelledError report.

    On Ctrl-C mitmproxy stops, then asyncio cancels the tasks of client connections
    still open; in early Python 3.12 releases (3.12.1 here) the stream protocol's
    done-callback calls task.exception() on such a cancelled task, and the default
    handler prints that CancelledError as a traceback. Nothing failed.
    """

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, asyncio.CancelledError)
                    and str(record.msg).startswith("Exception in callback StreamReaderProtocol"))


def done():
    # After our done() mitmproxy restores the loop's default exception handler, which
    # logs through the "asyncio" logger: the filter has to sit there.
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _ClosedClientFilter) for f in logger.filters):
        logger.addFilter(_ClosedClientFilter())
