# The hub's image (docker-compose.yml builds it): fleetpulse-hub with its [hub] extras. The
# compose file's one-shot `init` service runs it too (`fleetpulse-hub init-deploy`), which
# makes the broker's certificates with the openssl command.
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/*

# Only what the package is built from; tests, benchmarks and secrets stay out.
WORKDIR /src
COPY pyproject.toml ./
COPY agent ./agent
COPY hub ./hub
COPY shared ./shared
RUN pip install --no-cache-dir ".[hub]" && rm -rf /src

# Not root; uid 10001 is hub.deploy.HUB_UID, the owner init-deploy gives the hub's secrets.
# `add-device` / `revoke-device` rewrite the broker's password file, which belongs to the
# Mosquitto container's user: run them with `docker compose exec -u root hub …`.
RUN groupadd --system --gid 10001 fleetpulse \
    && useradd --system --uid 10001 --gid 10001 --create-home \
       --home-dir /var/lib/fleetpulse-hub fleetpulse
WORKDIR /fleetpulse
USER fleetpulse
EXPOSE 8080
CMD ["fleetpulse-hub", "run"]
