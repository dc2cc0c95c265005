"""The nftables table `ip minict`: masquerade, the loopback guard, and published ports.

Each rule carries a comment naming its owner (`bridge <name>` or a veth), so
one owner's rules are found and deleted together; every change is one
`nft -f` transaction (network.py's docstring says what each rule is for).
"""

import json
import os

from minict.errors import NetworkError

NFT_TABLE = "minict"


def base_rules(bridge: str, subnet) -> str:
    """The table, its chains and the bridge's rules; the rules are rewritten unless all there."""
    script = [
        f"add table ip {NFT_TABLE}",
        # dstnat/srcnat priorities, as iptables' nat table: published ports
        # for packets that arrive (prerouting) and that the host sends (output).
        f"add chain ip {NFT_TABLE} prerouting {{ type nat hook prerouting priority -100; }}",
        f"add chain ip {NFT_TABLE} output {{ type nat hook output priority -100; }}",
        f"add chain ip {NFT_TABLE} postrouting {{ type nat hook postrouting priority 100; }}",
        # Before conntrack (raw priority), for the guard below.
        f"add chain ip {NFT_TABLE} guard {{ type filter hook prerouting priority -300; }}",
    ]
    wanted = [
        ("postrouting", f"ip saddr {subnet} ip daddr != {subnet} masquerade"),
        # A published port reached at 127.0.0.1 (route_localnet): the
        # container answers the bridge's address, not its own loopback.
        ("postrouting", f'ip saddr 127.0.0.0/8 oifname "{bridge}" masquerade'),
        # route_localnet would also let a container send to the host's
        # loopback-only services; refuse that (as kube-proxy, CVE-2020-8558).
        ("guard", f'iifname "{bridge}" ip daddr 127.0.0.0/8 drop'),
    ]
    tag = f"bridge {bridge}"
    present = rules_tagged(tag)
    if len(present) != len(wanted):
        script += [f"delete rule ip {NFT_TABLE} {r['chain']} handle {r['handle']}"
                   for r in present]
        script += [f'add rule ip {NFT_TABLE} {chain} {rule} comment "{tag}"'
                   for chain, rule in wanted]
    return "\n".join(script) + "\n"


def dnat_rules(lease: dict) -> str:
    lines = []
    for port in lease["publish"]:
        match = (f"fib daddr type local {port['protocol']} dport {port['host']} "
                 f"dnat to {lease['address']}:{port['container']} comment \"{lease['veth']}\"")
        lines += [f"add rule ip {NFT_TABLE} prerouting {match}",
                  f"add rule ip {NFT_TABLE} output {match}"]
    return "\n".join(lines) + "\n"


def _rules() -> list[dict]:
    """Return the rules of table `ip minict` as nft's JSON objects (none if it is missing)."""
    import subprocess

    done = subprocess.run([_nft_path(), "-j", "-a", "list", "table", "ip", NFT_TABLE],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if "No such file or directory" in done.stderr:
            return []
        raise NetworkError(f"nft list table ip {NFT_TABLE}: {done.stderr.strip()}")
    return [item["rule"] for item in json.loads(done.stdout).get("nftables", [])
            if "rule" in item]


def rules_tagged(tag: str) -> list[dict]:
    """Return the rules of table `ip minict` whose comment is `tag`."""
    return [rule for rule in _rules() if rule.get("comment") == tag]


def delete_tagged(tag: str) -> None:
    script = "".join(f"delete rule ip {NFT_TABLE} {rule['chain']} handle {rule['handle']}\n"
                     for rule in rules_tagged(tag))
    if script:
        apply(script)


def apply(script: str) -> None:
    """Apply `script` as one nftables transaction (all of it or nothing)."""
    import subprocess

    done = subprocess.run([_nft_path(), "-f", "-"], input=script, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise NetworkError(f"nft: {done.stderr.strip() or 'failed'}")


def _nft_path() -> str:
    import shutil

    path = shutil.which("nft", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise NetworkError("bridge networking needs nftables' `nft` command; install nftables")
    return path
