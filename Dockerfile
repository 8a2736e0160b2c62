# One image for every Assay process; the command picks which:
#   docker run IMAGE serve --host 0.0.0.0 | worker | migrate | simulator ...
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app

# Editable, because Assay reads files that live beside the package rather
# than in it: db/schema.sql (app/store/db.py) and examples/ (app/demo.py).
# A plain `pip install .` would copy app/ into site-packages without them.
RUN pip install -e . \
    && useradd --system --no-create-home --home-dir /nonexistent assay

USER assay
EXPOSE 8000 8001
ENTRYPOINT ["assay"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
