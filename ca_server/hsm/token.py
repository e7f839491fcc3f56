"""One logged-in PKCS#11 session on one token, per process.

The module is initialised without OS locking (python-pkcs11 passes no `CK_C_INITIALIZE_ARGS`),
so every call into it holds `HsmToken`'s lock: the worker's event loop, its key-reload thread
and the supervisor's refresher share one session, one call at a time. The PIN is given to
`C_Login` once per session.

At start (`open`, `key_info`) a failure is an `HsmConfigError` whose one line names the URI and
the fix. While serving (`call`), a failing call is retried once on a fresh session (finalise,
initialise, log in, find the key again); if that fails too the token is *down*: callers get
`HsmUnavailable` at once until the next reconnect attempt, which backs off from
`RETRY_INITIAL_S` to `RETRY_MAX_S`. The first failure of an outage and its end are each logged
once (`outage_level`: the supervisor logs at ERROR, workers at DEBUG, so an outage is one line).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from ca_server.hsm.errors import HsmConfigError, HsmUnavailable
from ca_server.hsm.pin import Pin
from ca_server.hsm.uri import Pkcs11Uri, token_uri

if TYPE_CHECKING:
    import pkcs11

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_INITIAL_S = 0.25
RETRY_MAX_S = 5.0
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass
class _Outage:
    since: float
    reason: str
    delay: float
    retry_at: float


class HsmToken:
    """The session of this process on the token `token_label` of `module`."""

    def __init__(
        self,
        *,
        module: Path,
        token_label: str,
        pin: Pin,
        key_uri: Pkcs11Uri | None = None,
        outage_level: int = logging.ERROR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.module = module
        self._key_uri = key_uri
        self.token_label = token_label
        self._pin = pin
        self._outage_level = outage_level
        self._clock = clock
        self._lock = threading.RLock()
        self._lib: Any = None
        self._session: Any = None
        self._keys: dict[str, Any] = {}  # canonical URI -> python-pkcs11 private key object
        self._outage: _Outage | None = None

    @property
    def where(self) -> str:
        """What messages name: the configured key's URI, else the token's."""
        return str(self._key_uri) if self._key_uri is not None else token_uri(self.token_label)

    # --- start-up: precise errors ----------------------------------------------------------

    def open(self) -> None:
        """Load the module, find the token and log in; an `HsmConfigError` says what failed."""
        with self._lock:
            try:
                self._connect()
            finally:
                clear_openssl_errors()

    def close(self) -> None:
        """Log out and finalise the module (the next `open` starts afresh)."""
        with self._lock:
            self._drop_session()
            if self._lib is not None:
                _quietly(self._lib.finalize)
                self._lib = None
            clear_openssl_errors()

    def _connect(self) -> None:
        self._drop_session()
        lib = self._load_module()
        token = self._find_token(lib)
        from pkcs11 import exceptions as p11e

        try:
            self._session = token.open(user_pin=self._pin.value)
        except p11e.UserAlreadyLoggedIn:
            self._session = token.open()
        except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange) as exc:
            raise HsmConfigError(
                f"PKCS#11 login to {self.where} refused: wrong PIN ({type(exc).__name__}); "
                f"check {self._pin.source}"
            ) from None
        except p11e.PinLocked:
            raise HsmConfigError(
                f"PKCS#11 login to {self.where} refused: the user PIN is locked; the token's "
                "security officer must unlock it"
            ) from None
        except p11e.PKCS11Error as exc:
            raise HsmConfigError(
                f"cannot open a session on {self.where}: {describe(exc)}"
            ) from None

    def _load_module(self) -> Any:
        from pkcs11 import exceptions as p11e

        if self._lib is not None:
            _quietly(self._lib.finalize)
            try:
                self._lib.initialize()
                return self._lib
            except p11e.PKCS11Error as exc:
                raise HsmConfigError(
                    f"PKCS#11 module {self.module} did not initialise again: {describe(exc)}"
                ) from None
        if not self.module.is_file():
            raise HsmConfigError(
                f"PKCS#11 module {self.module} does not exist (for {self.where}): check "
                f"--pkcs11-module (Debian's SoftHSM2 is {SOFTHSM_MODULE})"
            )
        try:
            import pkcs11

            self._lib = pkcs11.lib(str(self.module))
        except p11e.PKCS11Error as exc:  # dlopen and C_Initialize failures alike
            raise HsmConfigError(
                f"cannot load PKCS#11 module {self.module} (for {self.where}): "
                f"{describe(exc)}; check --pkcs11-module"
            ) from None
        return self._lib

    def _find_token(self, lib: Any) -> Any:
        from pkcs11 import exceptions as p11e

        try:
            return lib.get_token(token_label=self.token_label)
        except p11e.NoSuchToken:
            labels = sorted({t.label for t in lib.get_tokens() if t.label})
            raise HsmConfigError(
                f"no PKCS#11 token labelled {self.token_label!r} in {self.module} "
                f"(for {self.where}; tokens there: {', '.join(labels) or 'none'}): check the "
                "URI's token= and the module's configuration (SOFTHSM2_CONF for SoftHSM2)"
            ) from None
        except p11e.MultipleTokensReturned:
            raise HsmConfigError(
                f"more than one PKCS#11 token is labelled {self.token_label!r} in {self.module}: "
                "relabel one of them"
            ) from None
        except p11e.PKCS11Error as exc:
            raise HsmConfigError(
                f"cannot list the tokens of {self.module} (for {self.where}): {describe(exc)}"
            ) from None

    def _drop_session(self) -> None:
        self._keys.clear()
        if self._session is not None:
            _quietly(self._session.close)
            self._session = None

    def startup_call(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(session)` once, connecting first if needed; errors pass through, for
        start-up and commands, where a precise message beats a retry."""
        with self._lock:
            try:
                if self._session is None:
                    self._connect()
                return fn(self._session)
            finally:
                clear_openssl_errors()

    def rw_call(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(rw_session)` on a read-write session of the logged-in token (key
        generation), closed afterwards."""
        with self._lock:
            try:
                if self._session is None:
                    self._connect()
                session = self._session.token.open(rw=True)
                try:
                    return fn(session)
                finally:
                    _quietly(session.close)
            finally:
                clear_openssl_errors()

    # --- serving: retry once, then back off ------------------------------------------------

    def call(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(session)` under the lock; a lost session becomes `HsmUnavailable`."""
        p11e = binding().exceptions
        with self._lock:
            try:
                return self._call(fn, p11e)
            finally:
                clear_openssl_errors()

    def _call(self, fn: Callable[[Any], T], p11e: Any) -> T:
        """One call with the lock held: retried once on a fresh session, else an outage."""
        outage = self._outage
        if outage is not None and self._clock() < outage.retry_at:
            raise HsmUnavailable()
        failures: list[str] = []
        for attempt in range(2):
            if self._session is None or attempt == 1 or outage is not None:
                try:
                    self._connect()
                except HsmConfigError as exc:
                    failures.append(f"reconnecting: {describe(exc)}")
                    break
                outage = None
            try:
                result = fn(self._session)
            except (p11e.PKCS11Error, HsmConfigError) as exc:
                failures.append(describe(exc))
                continue
            self._recovered()
            return result
        self._failed("; ".join(failures))
        raise HsmUnavailable() from None

    def _failed(self, reason: str) -> None:
        now = self._clock()
        outage = self._outage
        if outage is None:
            self._outage = _Outage(
                since=now, reason=reason, delay=RETRY_INITIAL_S, retry_at=now + RETRY_INITIAL_S
            )
            log.log(
                self._outage_level,
                "HSM %s unreachable (%s); callers get UNAVAILABLE while the CA reconnects "
                "with backoff",
                self.where,
                reason,
            )
            return
        outage.delay = min(outage.delay * 2, RETRY_MAX_S)
        outage.retry_at = now + outage.delay

    def _recovered(self) -> None:
        outage = self._outage
        if outage is None:
            return
        self._outage = None
        level = logging.WARNING if self._outage_level >= logging.ERROR else self._outage_level
        log.log(
            level, "HSM %s reachable again after %.1fs", self.where, self._clock() - outage.since
        )

    @property
    def healthy(self) -> bool:
        with self._lock:
            return self._outage is None

    @property
    def outage_reason(self) -> str | None:
        outage = self._outage
        return outage.reason if outage is not None else None

    def key_object(self, session: Any, uri: Pkcs11Uri, name: str) -> Any:
        """The private key object `uri` (canonical text `name`) names, found once per session
        (inside `call`)."""
        key = self._keys.get(name)
        if key is None:
            key = find_private_key(session, uri)
            self._keys[name] = key
        return key


@functools.cache
def _err_clear_error() -> Callable[[], None] | None:
    """The process's libcrypto `ERR_clear_error`, if one is loaded under the usual name."""
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        clear: Callable[[], None] = ctypes.CDLL(name).ERR_clear_error
    except (OSError, AttributeError):
        return None
    return clear


def clear_openssl_errors() -> None:
    """Drop what the module left on this thread's OpenSSL error queue.

    Modules built on the system's OpenSSL (SoftHSM2 among them) leave errors there, e.g. a
    failed `ENGINE_by_id` at `C_Initialize`; Python's `ssl` shares that libcrypto and would
    report the stale error on the thread's next TLS read (the Kubernetes client's, say).
    """
    clear = _err_clear_error()
    if clear is not None:
        clear()


@functools.cache
def binding() -> ModuleType:
    """python-pkcs11, imported on first use (a CA with file keys never loads it)."""
    import pkcs11

    return pkcs11


def find_private_key(session: pkcs11.Session | Any, uri: Pkcs11Uri) -> Any:
    """The one private key `uri` names; an `HsmConfigError` when none or several match."""
    from pkcs11 import ObjectClass

    if uri.type not in (None, "private"):
        raise HsmConfigError(f"{uri} names a {uri.type} object: a CA key URI needs type=private")
    found = list(session.get_objects(_template(uri, ObjectClass.PRIVATE_KEY)))
    if not found:
        raise HsmConfigError(
            f"no private key matches {uri} on that token: create one with `bulwark ca hsm init "
            f"--ca-key '{uri}'` or check object= and id= (pkcs11-tool --list-objects)"
        )
    if len(found) > 1:
        raise HsmConfigError(
            f"{len(found)} private keys match {uri}: add id= (or a unique object=) to the URI"
        )
    return found[0]


def find_public_key(session: Any, uri: Pkcs11Uri) -> Any | None:
    """The public key object stored beside the private key, if the token keeps one."""
    from pkcs11 import ObjectClass

    found = list(session.get_objects(_template(uri, ObjectClass.PUBLIC_KEY)))
    return found[0] if len(found) == 1 else None


def _template(uri: Pkcs11Uri, object_class: Any) -> dict[Any, Any]:
    from pkcs11 import Attribute

    attrs: dict[Any, Any] = {Attribute.CLASS: object_class}
    if uri.object is not None:
        attrs[Attribute.LABEL] = uri.object
    if uri.id is not None:
        attrs[Attribute.ID] = uri.id
    return attrs


def describe(exc: BaseException) -> str:
    """A failure as one line: our messages as they are, a PKCS#11 return code by its name
    (python-pkcs11's exceptions carry none)."""
    if isinstance(exc, HsmConfigError):
        return " ".join(str(exc).split())
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _quietly(fn: Callable[[], object]) -> None:
    """Best-effort clean-up of a session or module that may already be gone."""
    from pkcs11 import exceptions as p11e

    try:
        fn()
    except p11e.PKCS11Error as exc:  # the object may be dead already; nothing to do
        log.debug("PKCS#11 clean-up: %s", describe(exc))


__all__ = [
    "SOFTHSM_MODULE",
    "HsmToken",
    "binding",
    "describe",
    "find_private_key",
    "find_public_key",
]
