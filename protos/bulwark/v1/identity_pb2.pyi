from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CertificateParams(_message.Message):
    __slots__ = ("csr", "spiffe_id", "validity_duration")
    CSR_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDITY_DURATION_FIELD_NUMBER: _ClassVar[int]
    csr: str
    spiffe_id: str
    validity_duration: int
    def __init__(self, csr: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., validity_duration: _Optional[int] = ...) -> None: ...

class BatchCreateCertificatesRequest(_message.Message):
    __slots__ = ("params",)
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    params: _containers.RepeatedCompositeFieldContainer[CertificateParams]
    def __init__(self, params: _Optional[_Iterable[_Union[CertificateParams, _Mapping]]] = ...) -> None: ...

class ItemStatus(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class CertificateResult(_message.Message):
    __slots__ = ("status", "cert_chain", "spiffe_id")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    status: ItemStatus
    cert_chain: _containers.RepeatedScalarFieldContainer[str]
    spiffe_id: str
    def __init__(self, status: _Optional[_Union[ItemStatus, _Mapping]] = ..., cert_chain: _Optional[_Iterable[str]] = ..., spiffe_id: _Optional[str] = ...) -> None: ...

class BatchCreateCertificatesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CertificateResult]
    def __init__(self, results: _Optional[_Iterable[_Union[CertificateResult, _Mapping]]] = ...) -> None: ...

class MintJWTSVIDRequest(_message.Message):
    __slots__ = ("audience", "ttl_seconds")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    audience: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    def __init__(self, audience: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class MintJWTSVIDResponse(_message.Message):
    __slots__ = ("spiffe_id", "token", "expires_at")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    token: str
    expires_at: int
    def __init__(self, spiffe_id: _Optional[str] = ..., token: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class FetchTrustBundlesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FetchTrustBundlesResponse(_message.Message):
    __slots__ = ("trust_domain", "bundles")
    class BundlesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    bundles: _containers.ScalarMap[str, bytes]
    def __init__(self, trust_domain: _Optional[str] = ..., bundles: _Optional[_Mapping[str, bytes]] = ...) -> None: ...
