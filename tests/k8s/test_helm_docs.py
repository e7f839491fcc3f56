"""The Helm commands the READMEs give a new operator, run as written from the repository root
against the suite's real kube-apiserver (issue 22, "the first hour of an operator"): the
values files they name resolve from the root, the HA example creates the `bulwark-record`
Secret its values need, the image they build is the one they install, and the install notes
warn while the chart's placeholder image is set."""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Secret

from tests.support.deploy_tools import CHART, REPO, tool
from tests.support.kube_harness import ControlPlane

CHART_README = CHART / "README.md"
README = REPO / "README.md"
REGISTRY = "registry.example/team"
PLACEHOLDER_WARNING = "is the chart's placeholder, published by no registry"


def shell_lines(markdown: str) -> list[list[str]]:
    """Every command of the fenced code blocks, continuation lines joined, comments dropped."""
    lines: list[list[str]] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", markdown, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(words)
    return lines


def section(markdown: str, heading: str) -> str:
    """The part of `markdown` from `heading` to the next heading of its level or above (a
    `#` line inside a code block is a shell comment, not a heading)."""
    level = len(heading.split()[0])
    kept: list[str] = []
    fenced = False
    for line in markdown[markdown.index(heading) :].splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        mark = line.split(" ", 1)[0]
        if kept and not fenced and mark and set(mark) == {"#"} and len(mark) <= level:
            break
        kept.append(line)
    return "".join(kept)


def deploy_text(readme: Path) -> str:
    """What a reader deploying with Helm reads: the chart README, or README's Kubernetes part."""
    text = readme.read_text()
    return text if readme == CHART_README else section(text, "## Deploying on Kubernetes")


def examples(lines: list[list[str]]) -> Iterator[tuple[list[list[str]], list[str]]]:
    """(the kubectl commands since the previous install, the `helm install`) pairs."""
    before: list[list[str]] = []
    for words in lines:
        if words[:2] == ["helm", "install"]:
            yield before, words
            before = []
        elif words[0] == "kubectl":
            before.append(words)


def localised(words: list[str], namespace: str) -> list[str]:
    return [namespace if w == "istio-system" else w.replace("REGISTRY", REGISTRY) for w in words]


@pytest.fixture(scope="module")
def helm_in_repo(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """helm run from the repository root, as the READMEs say, against the real API server."""
    binary = tool("helm")
    home = tmp_path_factory.mktemp("helm-docs-home")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),  # client-go's discovery cache ($HOME/.kube), not in the repo
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(binary), *args, "--kubeconfig", str(control_plane.admin_kubeconfig)]
        return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    return call


@pytest.mark.parametrize("readme", [CHART_README, README], ids=["chart-readme", "readme"])
def test_readme_helm_examples_install_as_written_from_the_repo_root(
    readme: Path,
    helm_in_repo: Callable[..., subprocess.CompletedProcess[str]],
    control_plane: ControlPlane,
    admin_client: Client,
    make_namespace: Callable[[str], str],
) -> None:
    text = deploy_text(readme)
    lines = shell_lines(section(text, "### 1. Helm") if readme == README else text)
    found = list(examples(lines))
    assert len(found) >= 2, f"{readme}: expected the single-replica and the HA example"
    for kubectl_lines, install in found:
        ns = make_namespace("docs")
        for words in kubectl_lines:
            if words[1:3] == ["create", "namespace"]:
                continue  # the test made its own
            done = control_plane.kubectl_run(*localised(words, ns)[1:])
            assert done.returncode == 0, f"{shlex.join(words)}:\n{done.stderr}"
        argv = localised(install, ns)
        for flag, value in itertools.pairwise(argv):
            if flag == "-f":
                assert (REPO / value).is_file(), f"{readme}: -f {value} is not there from the root"
        done = helm_in_repo(*argv[1:])
        assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stderr}"
        assert PLACEHOLDER_WARNING not in done.stdout, "the example sets the image it built"
        deploy = admin_client.get(Deployment, "bulwark-ca", namespace=ns)
        assert deploy.spec is not None and deploy.spec.template.spec is not None
        (container,) = deploy.spec.template.spec.containers
        assert container.image == f"{REGISTRY}/bulwark:{_app_version()}"
        for source in container.env or []:
            ref = source.valueFrom.secretKeyRef if source.valueFrom else None
            if ref is not None and ref.name == "bulwark-record":
                secret = admin_client.get(Secret, "bulwark-record", namespace=ns)
                assert secret.data is not None and ref.key in secret.data, (
                    f"{readme.name}: the HA example's values need Secret bulwark-record"
                )


@pytest.mark.parametrize("readme", [CHART_README, README], ids=["chart-readme", "readme"])
def test_readmes_say_how_to_build_the_image_and_get_helm(readme: Path) -> None:
    text = deploy_text(readme)
    builds = [w for w in shell_lines(text) if w[:2] == ["docker", "build"]]
    assert builds, f"{readme.name} does not say how to build the image"
    build = builds[0]
    assert (REPO / build[build.index("-f") + 1]).is_file()
    assert f"REGISTRY/bulwark:{_app_version()}" in build, "the tag it builds is the one it installs"
    assert ["docker", "push", f"REGISTRY/bulwark:{_app_version()}"] in shell_lines(text)
    assert "tests/k8s/build-tool.sh helm" in text and "helm.sh/docs/intro/install" in text


def test_install_notes_warn_while_the_placeholder_image_is_set(
    helm_in_repo: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    chart = "deploy/helm/bulwark"
    default = helm_in_repo("install", "bulwark", chart, "-n", "docs", "--dry-run=client")
    assert default.returncode == 0, default.stderr
    assert f"image bulwark:{_app_version()} {PLACEHOLDER_WARNING}" in default.stdout
    assert "docker build -f deploy/Dockerfile" in default.stdout
    chosen = helm_in_repo(
        "install", "bulwark", chart, "-n", "docs", "--dry-run=client",
        "--set", f"image.repository={REGISTRY}/bulwark",
    )  # fmt: skip
    assert chosen.returncode == 0, chosen.stderr
    assert "NOTES:" in chosen.stdout and PLACEHOLDER_WARNING not in chosen.stdout


def _app_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
