// Command node runs a real one-node Kubernetes data plane for the node tier
// of the end-to-end tests, against the control plane of cmd/controlplane:
// the upstream kubelet (CRI: a private containerd), kube-scheduler and
// kube-proxy (iptables mode), built from the same pinned Kubernetes release.
//
// One binary, several processes (each upstream command installs its own
// signal handler, which Go allows once per process):
//
//	node run        supervisor: starts containerd and the three components
//	                as child processes, serves cluster DNS, publishes the
//	                "kubernetes" Service endpoint, waits for the Node to be Ready
//	node kubelet    the upstream kubelet command (flags passed through)
//	node scheduler  the upstream kube-scheduler command
//	node proxy      the upstream kube-proxy command
//	node forward    a TCP forwarder (host side: node network -> loopback apiserver)
//
// tests/node/node.sh sets up the network namespace this runs in and is the
// way to use it; see tests/node/README.md.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	args := os.Args[2:]
	var cmd *cobra.Command
	switch os.Args[1] {
	case "run":
		os.Exit(runMain(args))
	case "forward":
		os.Exit(forwardMain(args))
	case "kubelet":
		cmd = kubelet.NewKubeletCommand(context.Background())
	case "scheduler":
		cmd = scheduler.NewSchedulerCommand()
	case "proxy":
		cmd = proxy.NewProxyCommand()
	default:
		usage()
	}
	cmd.SetArgs(args)
	os.Exit(cli.Run(cmd))
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: node run|forward|kubelet|scheduler|proxy [flags]")
	os.Exit(2)
}
