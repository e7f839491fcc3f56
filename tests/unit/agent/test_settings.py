"""The agent's one table of settings: flags, `--help` and docs/AGENT.md agree with `AgentConfig`.

`agent.config.SETTINGS` is the only list of the agent's environment variables and flags; the
defaults are `AgentConfig`'s. These tests fail when a default shown to users (in `--help` or
in the docs' table) means another value than the config's, when a field or a variable Istio's
agent reads is missing from the table, and when code outside `agent/config.py` reads the
environment.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.cli.commands import main
from agent.config import CA_HEADER_PREFIX, SETTINGS, AgentConfig, Setting, config_defaults

REPO = Path(__file__).resolve().parents[3]

# pilot-agent's variables that docs/COMPATIBILITY.md §2 names, with the default it gives (None: it gives none).
ISTIO_VARIABLES: dict[str, str | None] = {
    "TRUST_DOMAIN": "cluster.local",
    "POD_NAMESPACE": None,
    "SERVICE_ACCOUNT": None,
    "PROV_CERT": None,
    "WORKLOAD_RSA_KEY_SIZE": "2048",
    "ECC_SIGNATURE_ALGORITHM": None,
    "ECC_CURVE": "P256",
    "SECRET_TTL": "24h",
    "ISTIO_META_CERT_SIGNER": None,
    "ISTIO_META_CLUSTER_ID": None,
    "CA_ADDR": "istiod.istio-system.svc:15012",
    "CA_ROOT_CA": None,
    "ISTIOD_SAN": None,
    "SECRET_GRACE_PERIOD_RATIO": "0.5",
    "SECRET_GRACE_PERIOD_RATIO_JITTER": "0.01",
    "WORKLOAD_IDENTITY_SOCKET_FILE": "socket",
    "OUTPUT_CERTS": None,
    "FILE_MOUNTED_CERTS": None,
}
# Named there, not a setting here: the agent's keys are always PKCS#8, what PKCS8_KEY=true asks.
NOT_SETTINGS = {"PKCS8_KEY"}


def by_env() -> dict[str, Setting]:
    return {s.env: s for s in SETTINGS if s.env}


def means_default(setting: Setting, shown: str) -> bool:
    """`shown`, read as a user's value of `setting` is read, is the config's default."""
    return bool(setting.kind.parse(shown, "shown default") == config_defaults()[setting.attr])


def has_default(setting: Setting) -> bool:
    return config_defaults()[setting.attr] not in (None, "")


def test_every_field_is_set_by_a_row_and_every_name_is_used_once() -> None:
    fields = set(config_defaults()) - {"ca_headers"}  # CA_HEADER_<NAME>, a family of names
    assert {s.attr for s in SETTINGS} == fields
    envs = [s.env for s in SETTINGS if s.env]
    flags = [s.flag for s in SETTINGS if s.flag]
    assert len(envs) == len(set(envs)) and len(flags) == len(set(flags))
    assert all(s.env or s.flag for s in SETTINGS)


def test_istios_variables_are_in_the_table_with_istios_defaults() -> None:
    table = by_env()
    assert not NOT_SETTINGS & set(table)
    missing = [name for name in ISTIO_VARIABLES if name not in table]
    assert missing == []
    for name, default in ISTIO_VARIABLES.items():
        if default is not None:
            assert means_default(table[name], default), name
    config = AgentConfig.from_env({CA_HEADER_PREFIX + "Tenant": "blue"})
    assert config.ca_headers == (("tenant", "blue"),)


def run_help(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: nothing wrapped
    with pytest.raises(SystemExit) as exited:
        main(["run", "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def flag_helps(text: str) -> dict[str, str]:
    """`--flag` -> its help, from argparse's options section."""
    helps: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        option = re.match(r"^  (--[a-z-]+)(?: \S+)?(?: {2,}(.*))?$", line)
        if option:
            current = option.group(1)
            helps[current] = option.group(2) or ""
        elif current and line.startswith("    "):
            helps[current] = f"{helps[current]} {line.strip()}".strip()
        else:
            current = ""
    return helps


def test_help_shows_the_config_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each flag's help, and each variable without a flag in the epilog, shows the default."""
    output = run_help(monkeypatch, capsys)
    helps = flag_helps(output)
    assert set(helps) == {s.flag for s in SETTINGS if s.flag} | {"--ca-header"}
    for setting in SETTINGS:
        if setting.flag:
            text = helps[setting.flag]
        else:
            text = setting.help()
            assert text in " ".join(output.split())  # the epilog, one wrapped paragraph
        if setting.env:
            assert text.startswith(f"{setting.env}: "), text
        shown = re.findall(r"\(default: ([^)]*)\)", text)
        if has_default(setting):
            assert len(shown) == 1 and means_default(setting, shown[0]), (setting.attr, text)
        else:
            assert shown == [], (setting.attr, text)


def docs_rows() -> list[tuple[str, str, str]]:
    """(variable, flag, default) of each row of the Configuration table in docs/AGENT.md."""
    text = (REPO / "docs" / "AGENT.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("variable", "---"):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def docs_names(setting: Setting) -> tuple[str, str]:
    """The variable and flag cells of `setting`'s row in docs/AGENT.md."""
    return (
        f"`{setting.env}`" if setting.env else "-",
        f"`{setting.flag}`" if setting.flag else "-",
    )


def test_docs_table_lists_every_setting_with_its_config_default() -> None:
    rows = docs_rows()
    defaults = {(var, flag): default for var, flag, default in rows}
    family = (f"`{CA_HEADER_PREFIX}<NAME>`", "`--ca-header NAME=VALUE`")
    assert set(defaults) == {docs_names(s) for s in SETTINGS} | {family}
    assert len(rows) == len(defaults)  # no setting twice
    for setting in SETTINGS:
        default = defaults[docs_names(setting)]
        code = re.fullmatch(r"`([^`]*)`", default)
        if has_default(setting):
            assert code and means_default(setting, code.group(1)), (setting.attr, default)
        else:
            assert code is None, (setting.attr, default)  # "unset", or "host of `CA_ADDR`"


def test_only_the_config_module_reads_the_environment() -> None:
    readers = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "agent").rglob("*.py"))
        if path.name != "config.py" or path.parent.name != "agent"
        if re.search(r"\b(environ|environb|getenv|getenvb)\b", path.read_text())
    ]
    assert readers == []
