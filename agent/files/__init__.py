"""Certificates as files: file-mounted secrets (`file-cert:`/`file-root:`) and OUTPUT_CERTS (`secrets`), and the polling file watcher behind them (`watch`)."""
