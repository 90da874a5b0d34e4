package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// A certificate the cluster needs, signed by its one CA.
type leaf struct {
	name     string // file stem: NAME.crt, NAME.key
	cn       string
	orgs     []string
	usages   []x509.ExtKeyUsage
	dnsNames []string
	ips      []net.IP
}

var (
	serverUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	clientUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	loopback    = []net.IP{net.ParseIP("127.0.0.1")}
)

// The users are the ones RBAC's bootstrap policy knows: system:masters, and the component identities
// bound to the system:kube-controller-manager and system:kube-scheduler roles.
func leaves(serviceIP net.IP) []leaf {
	return []leaf{
		{name: "apiserver", cn: "kube-apiserver", usages: serverUsage, ips: []net.IP{loopback[0], serviceIP},
			dnsNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
				"kubernetes.default.svc.cluster.local"}},
		{name: "etcd-server", cn: "etcd", usages: serverUsage, ips: loopback, dnsNames: []string{"localhost"}},
		{name: "apiserver-etcd-client", cn: "kube-apiserver-etcd-client", usages: clientUsage},
		{name: "admin", cn: "kubernetes-admin", orgs: []string{"system:masters"}, usages: clientUsage},
		{name: "kube-controller-manager", cn: "system:kube-controller-manager", usages: clientUsage},
		{name: "kube-scheduler", cn: "system:kube-scheduler", usages: clientUsage},
	}
}

// runPKI writes ca.crt/ca.key, one NAME.crt/NAME.key per leaf, and the service-account signing key pair
// sa.key/sa.pub into --dir.
func runPKI(args []string) int {
	flags := flag.NewFlagSet("pki", flag.ContinueOnError)
	dir := flags.String("dir", "", "directory to write the files into (required)")
	serviceIP := flags.String("service-ip", "10.0.0.1", "the kubernetes Service's ClusterIP, a SAN of the serving certificate")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	ip := net.ParseIP(*serviceIP)
	if *dir == "" || ip == nil {
		fmt.Fprintln(os.Stderr, "pki: --dir is required and --service-ip must be an IP address")
		return 2
	}
	if err := writePKI(*dir, ip); err != nil {
		fmt.Fprintf(os.Stderr, "pki: %v\n", err)
		return 1
	}
	return 0
}

func writePKI(dir string, serviceIP net.IP) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	now := time.Now()
	caKey, err := newKey(dir, "ca")
	if err != nil {
		return err
	}
	caTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "finetune-test-cluster-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, caKey.Public(), caKey)
	if err != nil {
		return err
	}
	if err := writePEM(dir, "ca.crt", "CERTIFICATE", caDER); err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	for i, l := range leaves(serviceIP) {
		key, err := newKey(dir, l.name)
		if err != nil {
			return err
		}
		template := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: l.cn, Organization: l.orgs},
			NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0), ExtKeyUsage: l.usages,
			KeyUsage: x509.KeyUsageDigitalSignature, DNSNames: l.dnsNames, IPAddresses: l.ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, template, ca, key.Public(), caKey)
		if err != nil {
			return err
		}
		if err := writePEM(dir, l.name+".crt", "CERTIFICATE", der); err != nil {
			return err
		}
	}
	saKey, err := newKey(dir, "sa")
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return err
	}
	return writePEM(dir, "sa.pub", "PUBLIC KEY", saPub)
}

// newKey makes a P-256 key and writes it to NAME.key.
func newKey(dir, name string) (crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return key, writePEM(dir, name+".key", "EC PRIVATE KEY", der)
}

func writePEM(dir, file, kind string, der []byte) error {
	return os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}
