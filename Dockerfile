# The hub's image (docker-compose.yml builds it): fleetpulse-hub with its [hub] extras.
FROM python:3.11-slim

# Only what the package is built from; tests, benchmarks and secrets stay out.
WORKDIR /src
COPY pyproject.toml ./
COPY agent ./agent
COPY hub ./hub
COPY shared ./shared
RUN pip install --no-cache-dir ".[hub]" && rm -rf /src

# Not root. `add-device` / `revoke-device` rewrite the broker's password file, which the
# Mosquitto container owns: run them with `docker-compose exec -u root hub …`.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/fleetpulse-hub fleetpulse
WORKDIR /fleetpulse
USER fleetpulse
EXPOSE 8080
CMD ["fleetpulse-hub", "run"]
