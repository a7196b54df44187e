package e2e

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// tokenIssuerName is the iss claim; the registry's auth.token.issuer must match it.
const tokenIssuerName = "shoal-e2e-token-issuer"

// tokenIssuer is a minimal registry token server (Docker token auth): RS256 JWTs with the signing
// certificate in x5c, which distribution checks against its rootcertbundle. Valid users get every
// action they ask for; anonymous callers get pull on repositories outside "private/".
type tokenIssuer struct {
	Realm    string // http://127.0.0.1:PORT/token
	CertFile string // PEM certificate for the registry's rootcertbundle
	users    map[string]string
	key      *rsa.PrivateKey
	certDER  []byte

	mu   sync.Mutex
	reqs []tokenReq
}

// tokenReq records one token request, so tests can see whether credentials were used.
type tokenReq struct {
	Method, User string
	Authed       bool
	Scopes       []string
}

func startTokenIssuer(s scope, users map[string]string) *tokenIssuer {
	s.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		s.Fatalf("token issuer key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "shoal e2e token signer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		s.Fatalf("token issuer cert: %v", err)
	}
	ti := &tokenIssuer{users: users, key: key, certDER: der, CertFile: filepath.Join(s.TempDir(), "token-cert.pem")}
	if err := os.WriteFile(ti.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		s.Fatalf("token issuer cert: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.Fatalf("token issuer: %v", err)
	}
	ti.Realm = "http://" + ln.Addr().String() + "/token"
	mux := http.NewServeMux()
	mux.HandleFunc("/token", ti.serveToken)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	s.Cleanup(func() { srv.Close() })
	return ti
}

// requests returns the token requests seen so far.
func (ti *tokenIssuer) requests() []tokenReq {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	return append([]tokenReq(nil), ti.reqs...)
}

func (ti *tokenIssuer) serveToken(w http.ResponseWriter, r *http.Request) {
	var user, pass, service string
	var scopes []string
	var hasCreds bool
	if r.Method == http.MethodPost { // OAuth2 form, as containerd sends it with credentials
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		user, pass = r.PostForm.Get("username"), r.PostForm.Get("password")
		hasCreds = user != ""
		service = r.PostForm.Get("service")
		scopes = strings.Fields(r.PostForm.Get("scope"))
	} else {
		user, pass, hasCreds = r.BasicAuth()
		service = r.URL.Query().Get("service")
		for _, sc := range r.URL.Query()["scope"] {
			scopes = append(scopes, strings.Fields(sc)...)
		}
	}
	authed := false
	if hasCreds {
		if p, ok := ti.users[user]; !ok || p != pass {
			ti.record(tokenReq{Method: r.Method, User: user, Scopes: scopes})
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`)
			return
		}
		authed = true
	}
	ti.record(tokenReq{Method: r.Method, User: user, Authed: authed, Scopes: scopes})
	tok, err := ti.mint(user, service, scopes, authed)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 300,
		"issued_at": time.Now().UTC().Format(time.RFC3339)})
}

func (ti *tokenIssuer) record(r tokenReq) {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	ti.reqs = append(ti.reqs, r)
}

type tokenAccess struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

func (ti *tokenIssuer) mint(sub, aud string, scopes []string, authed bool) (string, error) {
	acc := []tokenAccess{}
	for _, sc := range scopes { // repository:name:pull,push
		i, j := strings.Index(sc, ":"), strings.LastIndex(sc, ":")
		if i < 0 || i == j {
			continue
		}
		typ, name, acts := sc[:i], sc[i+1:j], strings.Split(sc[j+1:], ",")
		if !authed {
			acts = nil
			if !strings.HasPrefix(name, "private/") {
				acts = []string{"pull"}
			}
		}
		acc = append(acc, tokenAccess{Type: typ, Name: name, Actions: acts})
	}
	b64 := base64.RawURLEncoding.EncodeToString
	now := time.Now().Unix()
	hdr, err := json.Marshal(map[string]any{"typ": "JWT", "alg": "RS256",
		"x5c": []string{base64.StdEncoding.EncodeToString(ti.certDER)}})
	if err != nil {
		return "", err
	}
	claims, err := json.Marshal(map[string]any{"iss": tokenIssuerName, "sub": sub, "aud": aud,
		"exp": now + 300, "nbf": now - 5, "iat": now, "jti": fmt.Sprint(time.Now().UnixNano()), "access": acc})
	if err != nil {
		return "", err
	}
	in := b64(hdr) + "." + b64(claims)
	d := sha256.Sum256([]byte(in))
	sig, err := rsa.SignPKCS1v15(rand.Reader, ti.key, crypto.SHA256, d[:])
	if err != nil {
		return "", err
	}
	return in + "." + b64(sig), nil
}
