"""Which certificates a registry connection trusts and presents, as docker decides it.

    system CAs            or the bundle REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE names
    certs.d/<host[:port]>/ /etc/docker/certs.d (MINICT_CERTS_D moves it), read as
                          docker reads it: every *.crt is a CA added to the others,
                          every *.cert with the *.key of the same name a client
                          certificate (a lone .cert or .key is an error)
    --insecure            no verification; client certificates are still presented

Plain ssl, no requests: http.py hands each host's context to its connections.
"""

import os
import ssl

from minict.errors import MinictError

CERTS_D = "/etc/docker/certs.d"
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                  "/etc/ssl/cert.pem")


def certs_dir(host: str) -> str:
    """Return docker's per-registry directory for `host[:port]` (MINICT_CERTS_D moves the root)."""
    return os.path.join(os.environ.get("MINICT_CERTS_D") or CERTS_D, host.replace("/", "_"))


def tls_context(host: str, insecure: bool) -> ssl.SSLContext:
    """Return the TLS context for `host[:port]`; raise MinictError for a broken certs.d.

    System CAs (or REQUESTS_CA_BUNDLE's), the CAs and client certificate of
    docker's certs.d directory for the host, or no verification (--insecure).
    """
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
        context = ssl.create_default_context(cafile=bundle)
        if bundle is None and not context.cert_store_stats()["x509_ca"]:
            # A Python whose OpenSSL looks elsewhere (some pyenv builds): the distribution's bundle.
            for candidate in SYSTEM_BUNDLES:
                if os.path.isfile(candidate):
                    context.load_verify_locations(candidate)
                    break
    _load_certs_dir(context, certs_dir(host), insecure)
    return context


def _load_certs_dir(context: ssl.SSLContext, directory: str, insecure: bool) -> None:
    """Add what docker's certs.d/<host> holds: *.crt CAs, *.cert + *.key client certificates."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    except OSError as err:
        raise MinictError(f"cannot read {directory}: {err.strerror}") from None
    pairs = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            if name.endswith(".crt") and not insecure:
                context.load_verify_locations(path)
            elif name.endswith(".cert"):
                key = name[:-len(".cert")] + ".key"
                if key not in names:
                    raise MinictError(f"missing key {key} for client certificate {path}; "
                                      "CA certificates must use the extension .crt")
                pairs.append((path, os.path.join(directory, key)))
            elif name.endswith(".key") and name[:-len(".key")] + ".cert" not in names:
                raise MinictError(f"missing client certificate "
                                  f"{name[:-len('.key')]}.cert for key {path}")
        except (ssl.SSLError, OSError) as err:
            raise MinictError(f"cannot use {path}: {_ssl_words(err)}") from None
    # OpenSSL offers one client certificate per context: the first pair, by name.
    for cert, key in pairs[:1]:
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as err:
            raise MinictError(f"cannot use client certificate {cert}: {_ssl_words(err)}") from None


def _ssl_words(err: BaseException) -> str:
    return getattr(err, "reason", None) or getattr(err, "strerror", None) or type(err).__name__
