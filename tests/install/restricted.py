"""The Pod Security Standards' "restricted" profile (which includes "baseline") as a pure
checker over a pod spec: ``restricted_violations(pod_spec)`` lists every rule broken, so a
test shows all of them at once. Follows kubernetes.io/docs/concepts/security/pod-security-standards
(policy version 1.33); RELIABILITY.md S1 adds readOnlyRootFilesystem on top.
"""

from __future__ import annotations

from typing import Any

ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def _containers(pod: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{field}[{c.get('name', i)}]", c)
        for field in ("initContainers", "containers", "ephemeralContainers")
        for i, c in enumerate(pod.get(field) or [])
    ]


def restricted_violations(pod: dict[str, Any], *, read_only_root: bool = True) -> list[str]:
    """Every PSS "restricted" rule this pod spec breaks (empty when it complies)."""
    problems: list[str] = []
    pod_sc = pod.get("securityContext") or {}

    # Baseline: host namespaces, host ports, privileged, capabilities, volumes, sysctls.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"spec.{field} is true")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            problems.append(f"volume {volume.get('name')!r} has a disallowed type: {sorted(kinds - ALLOWED_VOLUME_TYPES)}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl.get('name')!r} is not in the safe set")
    if (pod_sc.get("seLinuxOptions") or {}).get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"):
        problems.append("pod seLinuxOptions.type is not allowed")

    # Restricted, pod level.
    pod_non_root = pod_sc.get("runAsNonRoot")
    pod_user = pod_sc.get("runAsUser")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_user == 0:
        problems.append("spec.securityContext.runAsUser is 0")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        problems.append(f"spec.securityContext.seccompProfile.type is {pod_seccomp}")

    for where, container in _containers(pod):
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']}")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{where}: procMount {sc['procMount']}")
        if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            problems.append(f"{where}: appArmorProfile is not RuntimeDefault/Localhost")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            problems.append(f"{where}: runAsNonRoot must be true (container or pod)")
        if sc.get("runAsUser", pod_user) == 0:
            problems.append(f"{where}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost (container or pod)")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where}: capabilities.drop must include ALL")
        added = set(capabilities.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: capabilities.add may only hold NET_BIND_SERVICE, got {sorted(added)}")
        if added - BASELINE_CAPABILITIES:
            problems.append(f"{where}: capabilities beyond baseline: {sorted(added - BASELINE_CAPABILITIES)}")
        if read_only_root and sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem must be true (RELIABILITY.md S1)")
    return problems
