"""Example app: read a grant through the Secrets API with the SDK (DPoP-bound).

Run inside a pod whose ServiceAccount is the grant's, with a projected token
for the secrets audience mounted at /var/run/secretgrants/token:

    volumes:
      - name: sg-token
        projected:
          sources:
            - serviceAccountToken: {audience: crud.secrets, expirationSeconds: 600, path: token}

Outside a cluster (``secretgrants dev``), pass a token from
``kubectl create token payments-api -n demo --audience crud.secrets``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from secretgrants.client import SecretsAPIError, SecretsClient

API = os.environ.get(
    "SECRETGRANTS_API", "https://secretgrants-webhook.secretgrants-system.svc:8443"
)
TOKEN = Path(os.environ.get("SECRETGRANTS_TOKEN_FILE", "/var/run/secretgrants/token"))
CA = os.environ.get("SECRETGRANTS_CA_FILE", "/var/run/secretgrants/ca.crt")


def main() -> int:
    with SecretsClient(API, token=TOKEN.read_text, dpop=True, verify=CA) as client:
        try:
            values = client.read("demo", "payments-db-api")
        except SecretsAPIError as err:
            print(f"refused: {err.status} {err.code}: {err.detail}", file=sys.stderr)
            return 1
    print(f"read {len(values)} key(s): {', '.join(sorted(values))}")  # names only, never values
    return 0


if __name__ == "__main__":
    sys.exit(main())
