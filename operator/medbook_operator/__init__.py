"""The quota operator: ``QuotaPolicy`` objects in, a published policy and a cleanup CronJob out.

Kubernetes imports live in this package only: nothing under ``services/``
knows about kopf or the API server. From the services it uses the policy
model (:mod:`medbook.discount.policy`) and nothing else.
"""

from typing import Final

GROUP: Final = "medbook.io"
VERSION: Final = "v1alpha1"
PLURAL: Final = "quotapolicies"
KIND: Final = "QuotaPolicy"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CRD_NAME: Final = f"{PLURAL}.{GROUP}"
MANAGER: Final = "medbook-operator"
