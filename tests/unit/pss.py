"""The Kubernetes Pod Security Standards, "baseline" and "restricted" profiles, as checks on a pod spec.

Written from the standard (kubernetes.io/docs/concepts/security/pod-security-standards, policy version 1.30+)
so that the project's pods are judged by the same rules the PodSecurity admission controller applies to a
namespace labelled ``pod-security.kubernetes.io/enforce: restricted``.
"""

from __future__ import annotations

from typing import Any

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
    "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
RESTRICTED_CAPABILITIES = {"NET_BIND_SERVICE"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}


def containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every container of a pod spec with where it is: ``containers[0]``, ``initContainers[1]``, ..."""
    return [
        (f"{kind}[{i}]", c)
        for kind in ("initContainers", "containers", "ephemeralContainers")
        for i, c in enumerate(spec.get(kind) or [])
    ]


def baseline_violations(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """What in ``spec`` (a core/v1 PodSpec) the baseline profile forbids, one line per violation."""
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            out.append(f"spec.{host}: must be unset or false")
    for i, vol in enumerate(spec.get("volumes") or []):
        if "hostPath" in vol:
            out.append(f"spec.volumes[{i}] ({vol.get('name')}): hostPath volumes are forbidden")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"spec.securityContext.sysctls: {sysctl.get('name')} is not a safe sysctl")
    for where, sc in [("spec.securityContext", pod_sc)] + [
        (f"spec.{w}.securityContext", c.get("securityContext") or {}) for w, c in containers(spec)
    ]:
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}.windowsOptions.hostProcess: must be unset or false")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"{where}.seccompProfile.type: Unconfined is forbidden")
        apparmor = (sc.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"{where}.appArmorProfile.type: {apparmor} is forbidden")
        selinux = sc.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            out.append(f"{where}.seLinuxOptions: only the container types, no user or role")
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(f"metadata.annotations[{key}]: AppArmor profile {value} is forbidden")
    for where, c in containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"spec.{where}.securityContext.privileged: must be unset or false")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"spec.{where}.securityContext.procMount: must be Default")
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            out.append(f"spec.{where}.securityContext.capabilities.add: {sorted(added - BASELINE_CAPABILITIES)}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"spec.{where}.ports: hostPort {port['hostPort']} is forbidden")
    return out


def restricted_violations(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """What in ``spec`` the restricted profile forbids (which includes everything baseline forbids)."""
    out = baseline_violations(spec, annotations)
    pod_sc = spec.get("securityContext") or {}
    for i, vol in enumerate(spec.get("volumes") or []):
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"spec.volumes[{i}] ({vol.get('name')}): volume type {sorted(kinds)} is not allowed")
    if pod_sc.get("runAsUser") == 0:
        out.append("spec.securityContext.runAsUser: must not be 0")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    for where, c in containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"spec.{where}.securityContext.allowPrivilegeEscalation: must be false")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"spec.{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"spec.{where}.securityContext.runAsUser: must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in SECCOMP_OK:
            out.append(f"spec.{where}: seccompProfile.type must be RuntimeDefault or Localhost (pod or container)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"spec.{where}.securityContext.capabilities.drop: must include ALL")
        added = set(caps.get("add") or [])
        if added - RESTRICTED_CAPABILITIES:
            out.append(f"spec.{where}.securityContext.capabilities.add: only NET_BIND_SERVICE, got {sorted(added)}")
    return out


def job_pods(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods the Job controller makes from each Job among ``children``: its pod template, in the Job's
    namespace, named after the Job (its pods' generated names start with it)."""
    return [
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {**c["spec"]["template"]["metadata"], "name": c["metadata"]["name"],
                      "namespace": c["metadata"]["namespace"]},
         "spec": c["spec"]["template"]["spec"]}
        for c in children if c["kind"] == "Job"
    ]  # fmt: skip
