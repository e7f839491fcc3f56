"""Agents and Envoys of one test, started on demand and all stopped at its end."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from tests.support.agent_process import AgentProcess, start_agent_process
from tests.support.ca_process import RunningCa
from tests.support.envoy import (
    EnvoyProcess,
    client_bootstrap,
    local_upstream,
    running_envoy,
    server_bootstrap,
)

NAMESPACE = "demo"


def spiffe_id(service_account: str) -> str:
    return f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{service_account}"


class Mesh:
    """Real agents (processes) for `ca` and real Envoys on their sockets, under `work`."""

    def __init__(self, ca: RunningCa, work: Path, stack: ExitStack, sds_api: str = "GRPC") -> None:
        self.ca, self.work, self._stack, self.sds_api = ca, work, stack, sds_api
        self.agents: dict[str, AgentProcess] = {}
        # False: `server`/`client` return once Envoy's admin API is up, before its secrets.
        self.wait_for_envoy = True

    def agent(self, service_account: str, *, ttl: str = "1h", ready: bool = True) -> AgentProcess:
        """An agent for demo/`service_account` (EC keys, `SECRET_TTL`=`ttl`) on
        `<work>/<service_account>.sock`; with `ready`, once it holds a certificate."""
        (self.work / f"ready-{service_account}.json").unlink(missing_ok=True)  # a previous run's
        env = {"ECC_SIGNATURE_ALGORITHM": "ECDSA", "SECRET_TTL": ttl}
        agent = start_agent_process(
            self.ca, self.work, namespace=NAMESPACE, service_account=service_account, extra_env=env
        )
        self._stack.callback(agent.stop)
        if ready:
            agent.wait_ready()
        self.agents[service_account] = agent
        return agent

    def server(self, service_account: str, *, client: str) -> EnvoyProcess:
        """A server Envoy on `service_account`'s agent admitting only `client`'s SPIFFE ID."""
        port = self._stack.enter_context(local_upstream())
        bootstrap = server_bootstrap(
            node=service_account,
            socket=self.agents[service_account].socket,
            upstream_port=port,
            client_spiffe_id=spiffe_id(client),
            sds_api=self.sds_api,
        )
        return self._envoy(f"{service_account}-server", bootstrap)

    def client(
        self,
        service_account: str,
        *,
        server: EnvoyProcess,
        server_sa: str,
        fresh_connections: bool = False,
    ) -> EnvoyProcess:
        """A client Envoy on `service_account`'s agent calling `server`, expecting `server_sa`."""
        bootstrap = client_bootstrap(
            node=service_account,
            socket=self.agents[service_account].socket,
            server_port=server.port,
            server_spiffe_id=spiffe_id(server_sa),
            fresh_connections=fresh_connections,
            sds_api=self.sds_api,
        )
        return self._envoy(f"{service_account}-client-to-{server_sa}", bootstrap)

    def _envoy(self, name: str, bootstrap: dict[str, object]) -> EnvoyProcess:
        if not self.wait_for_envoy:
            envoy = EnvoyProcess(name, self.work, bootstrap)
            self._stack.callback(envoy.stop)
            return envoy.spawn()
        return self._stack.enter_context(running_envoy(name, self.work, bootstrap))
