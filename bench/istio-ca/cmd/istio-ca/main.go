// Command istio-ca runs Istio's own CA the way istiod serves it, without Kubernetes, as the
// peer of Bulwark's CA in `make bench`. Every piece of logic is Istio's:
//   - an ECDSA P-256 self-signed root made by security/pkg/pki/util (GenCertKeyFromOptions),
//     loaded with ca.NewPluggedCertIstioCAOptions and ca.NewIstioCA (istiod's plugged-cert CA);
//   - the IstioCertificateService from security/pkg/server/ca.New;
//   - istiod's gRPC server options (pilot/pkg/grpc.ServerOptions with istiod's keepalive
//     defaults, its prometheus interceptor and handling-time histogram) and TLS as istiod's
//     secure gRPC port sets it up, serving a certificate that root signs for
//     istiod.istio-system.svc;
//   - istiod's authenticators in istiod's order: the ClientCertAuthenticator, then
//     authenticate.JwtAuthenticator (istiod's out-of-cluster JWT rule) given an issuer,
//     an audience and a JWKS URL, which it reads over HTTP.
//
// Only the flag parsing, the file writing and the "listening" line are ours.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"istio.io/api/security/v1beta1"
	istiogrpc "istio.io/istio/pilot/pkg/grpc"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/config/mesh/meshwatcher"
	istiokeepalive "istio.io/istio/pkg/keepalive"
	"istio.io/istio/pkg/log"
	"istio.io/istio/pkg/security"
	xdspkg "istio.io/istio/pkg/xds"
	"istio.io/istio/security/pkg/pki/ca"
	"istio.io/istio/security/pkg/pki/util"
	caserver "istio.io/istio/security/pkg/server/ca"
	"istio.io/istio/security/pkg/server/ca/authenticate"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address of the TLS gRPC port")
	dir := flag.String("dir", "", "directory for root-cert.pem (the root clients trust) and the CA key")
	issuer := flag.String("issuer", "", "JWT issuer the authenticator accepts")
	audience := flag.String("audience", "istio-ca", "JWT audience the authenticator accepts")
	jwksURL := flag.String("jwks-url", "", "URL of the issuer's JWKS")
	serverName := flag.String("server-name", "istiod.istio-system.svc", "DNS SAN of the serving certificate")
	flag.Parse()
	if *dir == "" || *issuer == "" || *jwksURL == "" {
		fmt.Fprintln(os.Stderr, "istio-ca: -dir, -issuer and -jwks-url are required")
		os.Exit(2)
	}
	logOpts := log.DefaultOptions()
	logOpts.OutputPaths = []string{"stderr"}
	logOpts.ErrorOutputPaths = []string{"stderr"}
	if err := log.Configure(logOpts); err != nil {
		fail("configure istio log", err)
	}

	istioCA, rootCert, rootKey := newCA(*dir)
	jwtAuth, err := authenticate.NewJwtAuthenticator(
		&v1beta1.JWTRule{Issuer: *issuer, Audiences: []string{*audience}, JwksUri: *jwksURL},
		meshwatcher.NewTestWatcher(mesh.DefaultMeshConfig()),
	)
	if err != nil {
		fail("JWT authenticator", err)
	}
	// istiod's order: the client certificate authenticator first, then the JWT rule's.
	authenticators := []security.Authenticator{&authenticate.ClientCertAuthenticator{}, jwtAuth}
	caSrv, err := caserver.New(istioCA, 24*time.Hour, authenticators, nil)
	if err != nil {
		fail("CA server", err)
	}

	grpcprom.EnableHandlingTimeHistogram() // as istiod's NewServer does
	opts := istiogrpc.ServerOptions(istiokeepalive.DefaultOption(), xdspkg.RecordRecvSize,
		grpcprom.UnaryServerInterceptor)
	opts = append(opts, grpc.Creds(credentials.NewTLS(servingTLS(rootCert, rootKey, *serverName))))
	grpcServer := grpc.NewServer(opts...)
	caSrv.Register(grpcServer)

	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		fail("listen", err)
	}
	fmt.Printf("listening %s\n", lis.Addr().String())
	os.Stdout.Sync()
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		grpcServer.Stop()
	}()
	if err := grpcServer.Serve(lis); err != nil {
		fail("serve", err)
	}
}

// newCA makes istiod's plugged-cert CA from a fresh ECDSA P-256 self-signed root.
func newCA(dir string) (*ca.IstioCA, []byte, []byte) {
	certPem, keyPem, err := util.GenCertKeyFromOptions(util.CertOptions{
		Org:          "cluster.local",
		TTL:          10 * 365 * 24 * time.Hour,
		IsCA:         true,
		IsSelfSigned: true,
		ECSigAlg:     util.EcdsaSigAlg,
		ECCCurve:     util.P256Curve,
	})
	if err != nil {
		fail("generate root", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		fail("mkdir", err)
	}
	rootFile := filepath.Join(dir, "root-cert.pem")
	keyFile := filepath.Join(dir, "ca-key.pem")
	if err := os.WriteFile(rootFile, certPem, 0o644); err != nil {
		fail("write root", err)
	}
	if err := os.WriteFile(keyFile, keyPem, 0o600); err != nil {
		fail("write key", err)
	}
	caOpts, err := ca.NewPluggedCertIstioCAOptions(ca.SigningCAFileBundle{
		RootCertFile:    rootFile,
		CertChainFiles:  []string{},
		SigningCertFile: rootFile,
		SigningKeyFile:  keyFile,
	}, 24*time.Hour, 90*24*time.Hour, 2048)
	if err != nil {
		fail("CA options", err)
	}
	istioCA, err := ca.NewIstioCA(caOpts)
	if err != nil {
		fail("CA", err)
	}
	return istioCA, certPem, keyPem
}

// servingTLS is the TLS of istiod's secure gRPC port, serving a certificate the root signs.
func servingTLS(rootCert, rootKey []byte, serverName string) *tls.Config {
	signer, err := util.ParsePemEncodedCertificate(rootCert)
	if err != nil {
		fail("parse root", err)
	}
	signerKey, err := util.ParsePemEncodedKey(rootKey)
	if err != nil {
		fail("parse root key", err)
	}
	certPem, keyPem, err := util.GenCertKeyFromOptions(util.CertOptions{
		Host:       serverName,
		TTL:        24 * time.Hour,
		SignerCert: signer,
		SignerPriv: signerKey,
		IsServer:   true,
		ECSigAlg:   util.EcdsaSigAlg,
		ECCCurve:   util.P256Curve,
	})
	if err != nil {
		fail("serving certificate", err)
	}
	pair, err := tls.X509KeyPair(certPem, keyPem)
	if err != nil {
		fail("serving key pair", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		MinVersion:   tls.VersionTLS12,
	}
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "istio-ca: %s: %v\n", what, err)
	os.Exit(1)
}
