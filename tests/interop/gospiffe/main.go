// gospiffe-check: one go-spiffe v2 feature per subcommand, run against a Bulwark agent socket.
//
// Every subcommand gives up after -timeout (a source that never returns is a failure, not a
// hang), prints one JSON line on success and exits 0; on failure it prints the error on stderr
// and exits 1.
//
//	x509     -socket S                      NewX509Source; the SVID verified by x509svid.Verify
//	jwt      -socket S -audience A          NewJWTSource; FetchJWTSVID; validated locally
//	bundles  -socket S -td T[,T...]         NewBundleSource; authorities of each trust domain
//	validate -socket S -audience A -token T ParseAndValidate with JWTSource bundles, and the
//	                                         agent's ValidateJWTSVID
//	serve    -socket S -listen H:P -allow ID  mTLS server authorizing exactly ID
//	dial     -socket S -addr H:P -expect ID   mTLS client authorizing exactly ID
//
// serve and dial trust the X509Source's own bundle set by default; with -trust bundle-source
// they verify the peer with a separate NewBundleSource instead (federated bundles included).
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type options struct {
	socket, audience, token, tds, listen, addr, peer, trust string
	timeout                                                 time.Duration
}

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: gospiffe-check x509|jwt|bundles|validate|serve|dial [flags]"))
	}
	cmd := os.Args[1]
	var o options
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	fs.StringVar(&o.socket, "socket", "", "agent socket path")
	fs.StringVar(&o.audience, "audience", "", "JWT audience")
	fs.StringVar(&o.token, "token", "", "JWT-SVID to validate")
	fs.StringVar(&o.tds, "td", "", "trust domains, comma separated")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:0", "serve: listen address")
	fs.StringVar(&o.addr, "addr", "", "dial: server address")
	fs.StringVar(&o.peer, "allow", "", "serve: the one client SPIFFE ID allowed")
	fs.StringVar(&o.peer, "expect", "", "dial: the one server SPIFFE ID allowed")
	fs.StringVar(&o.trust, "trust", "x509-source", "serve/dial: x509-source or bundle-source")
	fs.DurationVar(&o.timeout, "timeout", 20*time.Second, "give up after")
	_ = fs.Parse(os.Args[2:])
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	addr := workloadapi.WithAddr("unix://" + o.socket)
	clientOpt := workloadapi.WithClientOptions(addr)
	var out any
	var err error
	switch cmd {
	case "x509":
		out, err = checkX509(ctx, clientOpt)
	case "jwt":
		out, err = fetchJWT(ctx, clientOpt, o.audience)
	case "bundles":
		out, err = checkBundles(ctx, clientOpt, strings.Split(o.tds, ","))
	case "validate":
		out, err = validate(ctx, addr, o)
	case "serve":
		cancel() // a server runs until killed
		err = serve(context.Background(), clientOpt, addr, o)
	case "dial":
		out, err = dial(ctx, clientOpt, addr, o)
	default:
		err = fmt.Errorf("unknown subcommand %q", cmd)
	}
	if err != nil {
		fail(err)
	}
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}

func checkX509(ctx context.Context, opt workloadapi.X509SourceOption) (any, error) {
	source, err := workloadapi.NewX509Source(ctx, opt)
	if err != nil {
		return nil, fmt.Errorf("NewX509Source: %w", err)
	}
	defer source.Close()
	svid, err := source.GetX509SVID()
	if err != nil {
		return nil, err
	}
	id, _, err := x509svid.Verify(svid.Certificates, source)
	if err != nil {
		return nil, fmt.Errorf("x509svid.Verify: %w", err)
	}
	return map[string]any{"spiffe_id": id.String(), "serial": svid.Certificates[0].SerialNumber.Text(16)}, nil
}

func fetchJWT(ctx context.Context, opt workloadapi.JWTSourceOption, audience string) (any, error) {
	source, err := workloadapi.NewJWTSource(ctx, opt)
	if err != nil {
		return nil, fmt.Errorf("NewJWTSource: %w", err)
	}
	defer source.Close()
	svid, err := source.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		return nil, fmt.Errorf("FetchJWTSVID: %w", err)
	}
	token := svid.Marshal()
	if _, err := jwtsvid.ParseAndValidate(token, source, []string{audience}); err != nil {
		return nil, fmt.Errorf("own JWT-SVID does not validate: %w", err)
	}
	return map[string]any{"spiffe_id": svid.ID.String(), "token": token, "audience": svid.Audience}, nil
}

func checkBundles(ctx context.Context, opt workloadapi.BundleSourceOption, tds []string) (any, error) {
	source, err := workloadapi.NewBundleSource(ctx, opt)
	if err != nil {
		return nil, fmt.Errorf("NewBundleSource: %w", err)
	}
	defer source.Close()
	out := map[string]any{}
	for _, name := range tds {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, err
		}
		x509Count, jwtCount := 0, 0
		if b, err := source.GetX509BundleForTrustDomain(td); err == nil {
			x509Count = len(b.X509Authorities())
		}
		if b, err := source.GetJWTBundleForTrustDomain(td); err == nil {
			jwtCount = len(b.JWTAuthorities())
		}
		out[name] = map[string]int{"x509_authorities": x509Count, "jwt_authorities": jwtCount}
	}
	return out, nil
}

func validate(ctx context.Context, opt workloadapi.ClientOption, o options) (any, error) {
	source, err := workloadapi.NewJWTSource(ctx, workloadapi.WithClientOptions(opt))
	if err != nil {
		return nil, fmt.Errorf("NewJWTSource: %w", err)
	}
	defer source.Close()
	local, err := jwtsvid.ParseAndValidate(o.token, source, []string{o.audience})
	if err != nil {
		return nil, fmt.Errorf("ParseAndValidate: %w", err)
	}
	remote, err := workloadapi.ValidateJWTSVID(ctx, o.token, o.audience, opt)
	if err != nil {
		return nil, fmt.Errorf("ValidateJWTSVID: %w", err)
	}
	return map[string]any{"local": local.ID.String(), "agent": remote.ID.String()}, nil
}

// trustSource: the bundles a peer is verified with, per -trust; the closer releases it.
func trustSource(ctx context.Context, svids *workloadapi.X509Source, addr workloadapi.ClientOption, o options) (x509bundle.Source, func(), error) {
	switch o.trust {
	case "x509-source":
		return svids, func() {}, nil
	case "bundle-source":
		bundles, err := workloadapi.NewBundleSource(ctx, workloadapi.WithClientOptions(addr))
		if err != nil {
			return nil, nil, fmt.Errorf("NewBundleSource: %w", err)
		}
		return bundles, func() { _ = bundles.Close() }, nil
	}
	return nil, nil, fmt.Errorf("unknown -trust %q", o.trust)
}

func serve(ctx context.Context, opt workloadapi.X509SourceOption, addr workloadapi.ClientOption, o options) error {
	allowed, err := spiffeid.FromString(o.peer)
	if err != nil {
		return err
	}
	source, err := workloadapi.NewX509Source(ctx, opt)
	if err != nil {
		return fmt.Errorf("NewX509Source: %w", err)
	}
	defer source.Close()
	trust, release, err := trustSource(ctx, source, addr, o)
	if err != nil {
		return err
	}
	defer release()
	config := tlsconfig.MTLSServerConfig(source, trust, tlsconfig.AuthorizeID(allowed))
	listener, err := tls.Listen("tcp", o.listen, config)
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", listener.Addr())
	for {
		conn, err := listener.Accept()
		if err != nil {
			return err
		}
		go answer(conn.(*tls.Conn))
	}
}

func answer(conn *tls.Conn) {
	defer conn.Close()
	if err := conn.Handshake(); err != nil {
		fmt.Fprintln(os.Stderr, "handshake refused:", err)
		return
	}
	peer, err := x509svid.IDFromCert(conn.ConnectionState().PeerCertificates[0])
	if err != nil {
		return
	}
	fmt.Fprintf(conn, "hello %s\n", peer)
}

func dial(ctx context.Context, opt workloadapi.X509SourceOption, addr workloadapi.ClientOption, o options) (any, error) {
	expected, err := spiffeid.FromString(o.peer)
	if err != nil {
		return nil, err
	}
	source, err := workloadapi.NewX509Source(ctx, opt)
	if err != nil {
		return nil, fmt.Errorf("NewX509Source: %w", err)
	}
	defer source.Close()
	trust, release, err := trustSource(ctx, source, addr, o)
	if err != nil {
		return nil, err
	}
	defer release()
	config := tlsconfig.MTLSClientConfig(source, trust, tlsconfig.AuthorizeID(expected))
	dialer := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: config}
	conn, err := dialer.DialContext(ctx, "tcp", o.addr)
	if err != nil {
		return nil, fmt.Errorf("mTLS dial: %w", err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	return map[string]any{"answer": strings.TrimSpace(line)}, nil
}
