"""Glue between `CaConfig` and the CA slots: which store holds them, and their `SlotPolicy`."""

from __future__ import annotations

from datetime import datetime

from ca_server.authority.custody import FILE_CUSTODY, KeyCustody
from ca_server.authority.material import create_self_signed, write_root_bundle
from ca_server.authority.slots.model import Authority, SlotPolicy
from ca_server.authority.slots.rotator import SlotRotator
from ca_server.authority.slots.store import DirectorySlotStore, SlotStore
from ca_server.config import CaConfig

CACERTS_SLOTS_DIR = "cacerts-slots"  # a plugged-in CA's slots, apart from a self-signed one's
CACERTS_SLOTS_SECRET = "bulwark-cacerts-slots"  # the same with Kubernetes, shared by replicas


def policy_of(config: CaConfig) -> SlotPolicy:
    return SlotPolicy(
        prepare_at=config.ca_prepare_at,
        propagation_delay=config.ca_propagation_delay,
        max_ttl=config.max_ttl,
    )


def slot_store(config: CaConfig, custody: KeyCustody = FILE_CUSTODY) -> SlotStore:
    """With Kubernetes a Secret every replica reads (`istio-ca-secret` for a self-signed CA,
    `bulwark-cacerts-slots` for a plugged-in one), else the data dir."""
    if config.kube is not None:
        from ca_server.kube import SecretKeyStore
        from ca_server.kube.wiring import client_factory, key_store

        if config.cacerts_dir is None:
            return key_store(config.kube, custody)
        client = client_factory(config.kube)()
        return SecretKeyStore(
            client,
            namespace=config.kube.namespace,
            name=CACERTS_SLOTS_SECRET,
            mirror=False,
            custody=custody,
        )
    if config.cacerts_dir is not None:
        return DirectorySlotStore(config.data_dir / CACERTS_SLOTS_DIR, custody)
    return DirectorySlotStore(config.data_dir / "ca", custody)


def build_rotator(config: CaConfig, custody: KeyCustody = FILE_CUSTODY) -> SlotRotator | None:
    """A rotator for `--ca-rotation new-key`; None keeps same-key renewal. A prepared CA's key
    comes from the custody: a new file key, or one made inside the HSM. Each new state's
    bundle reaches root-cert.pem before the state is stored."""
    if config.ca_rotation != "new-key":
        return None
    root_file = config.root_cert_path

    def new_authority(now: datetime) -> Authority:
        key = custody.new_key(now)
        return Authority.of(create_self_signed(config.trust_domain, now, key))

    return SlotRotator(
        store=slot_store(config, custody),
        policy=policy_of(config),
        trust_domain=config.trust_domain,
        self_signed=config.cacerts_dir is None,
        new_authority=new_authority,
        publish=lambda material: write_root_bundle(root_file, material),
    )


__all__ = ["build_rotator", "policy_of", "slot_store"]
