# The operator image: slim, non-root, read-only friendly. Built by the Tiltfile and CI.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# The tracing extra is in the image; SECRETGRANTS_TRACING turns it on (off by default).
RUN pip install --no-cache-dir --prefix=/install ".[tracing]"

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
# 65532: the conventional "nonroot" uid; the Deployment enforces runAsNonRoot.
USER 65532:65532
EXPOSE 8080 8443 9090 9443
ENTRYPOINT ["secretgrants"]
CMD ["run", "--liveness=http://0.0.0.0:8080/healthz"]
