"""Certificates as files: file-mounted secrets, `file-cert:`/`file-root:` resources, the CA's
root file and OUTPUT_CERTS (`secrets`), on top of the polling file watcher (`watch`)."""
