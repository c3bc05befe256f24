"""The deployment package of a certified run (ARCHITECTURE.md section 4, `package/`).

    result = build_package("artifacts/<dag>/<run>")   # reads <run>/report.json
    result.path      # <run>/package/relcert-service-<version>.zip

A package is built only for an APPROVED or CONDITIONAL_APPROVAL decision. It holds the
Kubernetes manifests (validated offline with kubernetes-validate, strict), the Prometheus
rules whose thresholds are the certification targets, a Grafana dashboard, the service
configuration the run certified, a Dockerfile and pinned requirements, the deployment guide
and runbook, the certified models with their checksums, the certification report, a
deployment checklist, and a smoke test with golden requests. The zip is reproducible.

The image (`pipeline.package.image`): with a wheelhouse (`pipeline.package.wheelhouse`, one
hash-checked wheel per requirement of include/service-locks/<format>.txt) the package builds
offline, and `build_image` builds it as shipped and saves it as an OCI archive beside the zip.
"""

from pipeline.package.builder import (
    ALLOWED_DECISIONS,
    PACKAGE_NAME,
    PackageResult,
    build_package,
    check_decision,
    label_safe,
)
from pipeline.package.errors import ManifestValidationError, PackageError, PackageRefused
from pipeline.package.settings import DeploymentSettings, EngineSettings
from pipeline.package.validate import validate_manifests

__all__ = [
    "ALLOWED_DECISIONS",
    "PACKAGE_NAME",
    "DeploymentSettings",
    "EngineSettings",
    "ManifestValidationError",
    "PackageError",
    "PackageRefused",
    "PackageResult",
    "build_package",
    "check_decision",
    "label_safe",
    "validate_manifests",
]
