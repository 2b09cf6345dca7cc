# A stand-in for Docker Hub's postgres image, from Debian's own postgresql package (for
# docker/e2e.sh where Docker Hub is out of reach): the same environment variables
# (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB), data in /var/lib/postgresql/data, password
# authentication over the network, pg_isready for the health check.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
