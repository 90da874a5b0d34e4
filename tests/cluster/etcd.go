package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// runEtcd runs one etcd member that serves clients over TLS with client-certificate authentication, until
// SIGTERM or SIGINT. Its data directory survives a restart, so a test can kill it and start it again.
func runEtcd(args []string) int {
	flags := flag.NewFlagSet("etcd", flag.ContinueOnError)
	dataDir := flags.String("data-dir", "", "directory of the member's data (required)")
	clientURL := flags.String("listen-client-url", "https://127.0.0.1:2379", "where clients connect")
	peerURL := flags.String("listen-peer-url", "http://127.0.0.1:2380", "the (unused) peer listener of this single member")
	certFile := flags.String("cert-file", "", "serving certificate (required)")
	keyFile := flags.String("key-file", "", "serving key (required)")
	caFile := flags.String("trusted-ca-file", "", "CA that client certificates must chain to (required)")
	noFsync := flags.Bool("unsafe-no-fsync", false, "skip fsync: data survives a killed process, not a host crash")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *dataDir == "" || *certFile == "" || *keyFile == "" || *caFile == "" {
		fmt.Fprintln(os.Stderr, "etcd: --data-dir, --cert-file, --key-file and --trusted-ca-file are required")
		return 2
	}
	client, err := url.Parse(*clientURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: --listen-client-url: %v\n", err)
		return 2
	}
	peer, err := url.Parse(*peerURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: --listen-peer-url: %v\n", err)
		return 2
	}

	cfg := embed.NewConfig()
	cfg.Dir = *dataDir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ClientTLSInfo = transport.TLSInfo{
		CertFile: *certFile, KeyFile: *keyFile, TrustedCAFile: *caFile, ClientCertAuth: true,
	}
	cfg.UnsafeNoFsync = *noFsync
	cfg.LogLevel = "warn"

	server, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		return 1
	}
	defer server.Close()
	select {
	case <-server.Server.ReadyNotify():
	case <-time.After(2 * time.Minute):
		fmt.Fprintln(os.Stderr, "etcd: not ready after 2 minutes")
		return 1
	}
	fmt.Fprintf(os.Stderr, "etcd: ready on %s\n", client)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-stop:
		return 0
	case err := <-server.Err():
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		return 1
	}
}
