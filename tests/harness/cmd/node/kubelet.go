package main

// The kubelet's configuration and the kernel tunables it insists on.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// kubeletConfigYAML is a KubeletConfiguration for a throwaway test node:
// cgroupfs driver on cgroup v1, swap allowed, no disk-pressure evictions (the
// test machine's disk is not ours to judge), pod logs and state under --dir,
// the kubelet's API on the node address only (inside the node's network
// namespace), cluster DNS served by `node run`.
func kubeletConfigYAML(o runOptions, sock string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
cgroupRoot: %[2]s
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
memorySwap: {}
containerRuntimeEndpoint: unix://%[3]s
imageServiceEndpoint: unix://%[3]s
podLogsDir: %[4]s
clusterDomain: cluster.local
clusterDNS: [%[5]s]
resolvConf: ""
maxPods: 60
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "0%%"
  nodefs.inodesFree: "0%%"
  imagefs.available: "0%%"
  imagefs.inodesFree: "0%%"
evictionPressureTransitionPeriod: 5s
nodeStatusUpdateFrequency: 5s
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
shutdownGracePeriod: 0s
localStorageCapacityIsolation: true
registerNode: true
protectKernelDefaults: false
makeIPTablesUtilChains: false
`, o.nodeIP, o.cgroupRoot, sock, filepath.Join(o.dir, "pod-logs"), o.clusterDNS)
}

// kernelTunables are the sysctls the kubelet sets at start (panic on oops,
// reboot 10s after a panic, overcommit...). They are machine-wide, not ours to
// change on a shared test machine, and the kubelet refuses to start when it
// may neither set them nor find them set. So, in this private mount
// namespace only, each is shadowed by a file that already holds the value the
// kubelet wants; the host's settings are untouched.
var kernelTunables = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

func shimKernelTunables(dir string) error {
	for name, value := range kernelTunables {
		target := "/proc/sys/" + name
		cur, err := os.ReadFile(target)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(cur)) == value {
			continue
		}
		shim := filepath.Join(dir, strings.ReplaceAll(name, "/", "."))
		if err := os.WriteFile(shim, []byte(value+"\n"), 0o644); err != nil {
			return err
		}
		if err := syscall.Mount(shim, target, "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s over %s: %w", shim, target, err)
		}
	}
	return nil
}
