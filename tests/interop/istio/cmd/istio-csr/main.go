// Command istio-csr asks a CA for a workload certificate with Istio's own
// istio-agent code: the token plugin reads the token file, Istio's citadel
// client dials the CA over TLS (ClusterID header, retry interceptor), and
// Istio's secret cache makes the CSR with security/pkg/pki/util and checks
// the returned chain. Only this flag parsing and the JSON output are ours.
package main

import (
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"istio.io/istio/pkg/log"
	"istio.io/istio/pkg/security"
	"istio.io/istio/pkg/spiffe"
	"istio.io/istio/security/pkg/credentialfetcher"
	"istio.io/istio/security/pkg/nodeagent/cache"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
	pkiutil "istio.io/istio/security/pkg/pki/util"
)

type result struct {
	OK        bool     `json:"ok"`
	Error     string   `json:"error,omitempty"`
	Identity  string   `json:"identity,omitempty"`
	Chain     []string `json:"chain,omitempty"`
	Root      string   `json:"root,omitempty"`
	ExpiresAt string   `json:"expires_at,omitempty"`
	Verified  string   `json:"verified,omitempty"`
}

func main() {
	caAddr := flag.String("ca-addr", "", "CA address host:port (CA_ADDR)")
	caSAN := flag.String("ca-san", "istiod.istio-system.svc", "TLS server name of the CA (ISTIOD_SAN)")
	rootCert := flag.String("root-cert", "", "root certificate that verifies the CA (CA_ROOT_CA)")
	tokenFile := flag.String("token-file", "", "token file read by Istio's token plugin")
	clusterID := flag.String("cluster-id", "Kubernetes", "ClusterID header (ISTIO_META_CLUSTER_ID)")
	trustDomain := flag.String("trust-domain", "cluster.local", "TRUST_DOMAIN")
	namespace := flag.String("namespace", "default", "POD_NAMESPACE: namespace the CSR asks for")
	serviceAccount := flag.String("service-account", "default", "SERVICE_ACCOUNT: account the CSR asks for")
	ttl := flag.Duration("ttl", 24*time.Hour, "SECRET_TTL")
	ecc := flag.Bool("ecdsa", false, "ECC_SIGNATURE_ALGORITHM=ECDSA instead of RSA 2048")
	outputDir := flag.String("output-certs", "", "OUTPUT_CERTS directory (optional)")
	provCert := flag.String("prov-cert", "", "PROV_CERT directory: key.pem and cert-chain.pem for mTLS to the CA")
	expectIdentity := flag.String("expect-identity", "", "SPIFFE ID the certificate must carry (default: the one the CSR asks for)")
	flag.Parse()

	// Istio logs to stdout by default; keep stdout for the JSON result.
	logOpts := log.DefaultOptions()
	logOpts.OutputPaths = []string{"stderr"}
	logOpts.ErrorOutputPaths = []string{"stderr"}
	if err := log.Configure(logOpts); err != nil {
		fmt.Fprintln(os.Stderr, "configure istio log:", err)
		os.Exit(2)
	}

	res := run(*caAddr, *caSAN, *rootCert, *tokenFile, *clusterID, *trustDomain,
		*namespace, *serviceAccount, *expectIdentity, *ttl, *ecc, *outputDir, *provCert)
	out, _ := json.MarshalIndent(res, "", "  ")
	fmt.Println(string(out))
	if !res.OK {
		os.Exit(1)
	}
}

func run(caAddr, caSAN, rootCert, tokenFile, clusterID, trustDomain, namespace, serviceAccount, expectIdentity string,
	ttl time.Duration, ecc bool, outputDir, provCert string,
) result {
	// The same option set pilot-agent builds in options.NewSecurityOptions.
	opts := &security.Options{
		CAEndpoint:                     caAddr,
		CAEndpointSAN:                  caSAN,
		CAProviderName:                 "Citadel",
		ClusterID:                      clusterID,
		TrustDomain:                    trustDomain,
		WorkloadNamespace:              namespace,
		ServiceAccount:                 serviceAccount,
		WorkloadRSAKeySize:             2048,
		SecretTTL:                      ttl,
		SecretRotationGracePeriodRatio: 0.5,
		OutputKeyCertToDir:             outputDir,
		CAHeaders:                      map[string]string{},
	}
	if ecc {
		opts.ECCSigAlg = "ECDSA"
	}
	if tokenFile != "" {
		fetcher, err := credentialfetcher.NewCredFetcher(security.JWT, trustDomain, tokenFile, "")
		if err != nil {
			return result{Error: "credential fetcher: " + err.Error()}
		}
		opts.CredFetcher = fetcher
	}

	tlsOpts := &citadel.TLSOptions{RootCert: rootCert}
	if provCert != "" {
		// As istio-agent's GetKeyCertsForCA: the client certificate from PROV_CERT.
		opts.ProvCert = provCert
		tlsOpts.Key = filepath.Join(provCert, "key.pem")
		tlsOpts.Cert = filepath.Join(provCert, "cert-chain.pem")
	}
	client, err := citadel.NewCitadelClient(opts, tlsOpts)
	if err != nil {
		return result{Error: "citadel client: " + err.Error()}
	}
	secrets, err := cache.NewSecretManagerClient(client, opts)
	if err != nil {
		client.Close()
		return result{Error: "secret manager: " + err.Error()}
	}
	defer secrets.Close()

	item, err := secrets.GenerateSecret(security.WorkloadKeyCertResourceName)
	if err != nil {
		return result{Error: err.Error()}
	}

	identity := expectIdentity
	if identity == "" {
		identity = spiffe.Identity{TrustDomain: trustDomain, Namespace: namespace, ServiceAccount: serviceAccount}.String()
	}
	res := result{
		OK:        true,
		Identity:  identity,
		Chain:     splitPEM(string(item.CertificateChain)),
		Root:      string(item.RootCert),
		ExpiresAt: item.ExpireTime.UTC().Format(time.RFC3339),
	}
	// Istio's own check: chain builds to the root we trust, key matches, SPIFFE SAN.
	trusted, err := os.ReadFile(rootCert)
	if err != nil {
		res.OK, res.Error = false, "read root: "+err.Error()
		return res
	}
	// Expected fields: the workload profile of Istio's generate_cert.go.
	expected := &pkiutil.VerifyFields{
		Host:        identity,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		IsCA:        false,
	}
	if err := pkiutil.VerifyCertificate(item.PrivateKey, item.CertificateChain, trusted, expected); err != nil {
		res.OK, res.Error = false, "istio VerifyCertificate: "+err.Error()
		return res
	}
	res.Verified = "pkiutil.VerifyCertificate against " + rootCert
	return res
}

func splitPEM(chain string) []string {
	const end = "-----END CERTIFICATE-----"
	var out []string
	for _, part := range strings.SplitAfter(chain, end) {
		part = strings.TrimSpace(part)
		if part != "" {
			out = append(out, part+"\n")
		}
	}
	return out
}
