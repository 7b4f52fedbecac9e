package trigger_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/offload-go/offload/trigger"
)

const wantCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// dashboardMux mounts the dashboard as the documentation says, under a
// prefix.
func dashboardMux(opts *trigger.DashboardOptions) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/ops/dashboard/", http.StripPrefix("/ops/dashboard", trigger.Dashboard("/ops/tasks/", opts)))
	return mux
}

func get(t *testing.T, h http.Handler, method, target string, header http.Header) (*http.Response, string) {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for k, vs := range header {
		req.Header[k] = vs
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	res := rec.Result()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(body)
}

func TestDashboardFiles(t *testing.T) {
	t.Parallel()
	mux := dashboardMux(nil)
	tests := []struct {
		path        string
		contentType string
		contains    []string
	}{
		{"/ops/dashboard/", "text/html; charset=utf-8", []string{
			`<meta name="offload-api" content="/ops/tasks/">`,
			`<meta name="offload-refresh-ms" content="2000">`,
			`<script src="app.js" defer></script>`,
			`<link rel="stylesheet" href="app.css">`,
			`<title>offload tasks</title>`,
			`id="send-form"`,
		}},
		{"/ops/dashboard/index.html", "text/html; charset=utf-8", []string{`<meta name="offload-api" content="/ops/tasks/">`}},
		{"/ops/dashboard/app.js", "text/javascript; charset=utf-8", []string{`"use strict"`, "textContent"}},
		{"/ops/dashboard/app.css", "text/css; charset=utf-8", []string{".badge"}},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			res, body := get(t, mux, http.MethodGet, tt.path, nil)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", res.StatusCode, body)
			}
			if got := res.Header.Get("Content-Type"); got != tt.contentType {
				t.Errorf("Content-Type %q, want %q", got, tt.contentType)
			}
			if got := res.Header.Get("Content-Security-Policy"); got != wantCSP {
				t.Errorf("Content-Security-Policy %q", got)
			}
			if got := res.Header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q", got)
			}
			if res.Header.Get("ETag") == "" {
				t.Error("no ETag")
			}
			for _, s := range tt.contains {
				if !strings.Contains(body, s) {
					t.Errorf("body lacks %q", s)
				}
			}
		})
	}
}

// The page never builds HTML from strings: no innerHTML, outerHTML,
// insertAdjacentHTML, document.write or eval anywhere in its script, and
// no inline script or style that the CSP would block.
func TestDashboardNoHTMLSinks(t *testing.T) {
	t.Parallel()
	mux := dashboardMux(nil)
	_, js := get(t, mux, http.MethodGet, "/ops/dashboard/app.js", nil)
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		if strings.Contains(js, sink) {
			t.Errorf("app.js uses %s", sink)
		}
	}
	_, html := get(t, mux, http.MethodGet, "/ops/dashboard/", nil)
	for _, inline := range []string{"<script>", "<style", "style=", "javascript:"} {
		if strings.Contains(strings.ToLower(html), inline) {
			t.Errorf("index.html has %q", inline)
		}
	}
	for _, attr := range []string{"onclick=", "onload=", "onsubmit=", "onchange="} {
		if strings.Contains(strings.ToLower(html), attr) {
			t.Errorf("index.html has an inline handler %q", attr)
		}
	}
}

func TestDashboardNotFound(t *testing.T) {
	t.Parallel()
	mux := dashboardMux(nil)
	for _, path := range []string{
		"/ops/dashboard/app.ts",
		"/ops/dashboard/dashboard/app.js",
		"/ops/dashboard/index.html/",
		"/ops/dashboard/.env",
		"/ops/dashboard/app.js/x",
	} {
		res, _ := get(t, mux, http.MethodGet, path, nil)
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, res.StatusCode)
		}
	}
	// Served straight, with the prefix stripped: unknown files are 404 and
	// carry the headers too.
	h := trigger.Dashboard("/tasks/", nil)
	res, _ := get(t, h, http.MethodGet, "/favicon.ico", nil)
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("GET /favicon.ico: %d", res.StatusCode)
	}
	if res.Header.Get("Content-Security-Policy") != wantCSP || res.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("404 headers %v", res.Header)
	}
}

func TestDashboardMethods(t *testing.T) {
	t.Parallel()
	mux := dashboardMux(nil)
	res, body := get(t, mux, http.MethodHead, "/ops/dashboard/app.css", nil)
	if res.StatusCode != http.StatusOK || body != "" || res.Header.Get("Content-Type") != "text/css; charset=utf-8" {
		t.Errorf("HEAD: %d %q %v", res.StatusCode, body, res.Header)
	}
	res, _ = get(t, mux, http.MethodPost, "/ops/dashboard/", nil)
	if res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d, Allow %q", res.StatusCode, res.Header.Get("Allow"))
	}
}

func TestDashboardRevalidates(t *testing.T) {
	t.Parallel()
	mux := dashboardMux(nil)
	res, _ := get(t, mux, http.MethodGet, "/ops/dashboard/app.js", nil)
	etag := res.Header.Get("ETag")
	res, body := get(t, mux, http.MethodGet, "/ops/dashboard/app.js", http.Header{"If-None-Match": {etag}})
	if res.StatusCode != http.StatusNotModified || body != "" {
		t.Errorf("If-None-Match %s: %d, %d bytes", etag, res.StatusCode, len(body))
	}
}

// Mounted at "/dashboard" with no slash, the page is redirected to the
// slash, so that its relative links resolve under the prefix.
func TestDashboardRedirectsToSlash(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.Handle("/dashboard", http.StripPrefix("/dashboard", trigger.Dashboard("/tasks/", nil)))
	res, _ := get(t, mux, http.MethodGet, "/dashboard", nil)
	if res.StatusCode != http.StatusMovedPermanently || res.Header.Get("Location") != "/dashboard/" {
		t.Errorf("%d, Location %q", res.StatusCode, res.Header.Get("Location"))
	}
}

// Options reach the page, escaped as HTML attributes.
func TestDashboardOptions(t *testing.T) {
	t.Parallel()
	h := trigger.Dashboard("api", &trigger.DashboardOptions{
		Title:           `Jobs <"prod">`,
		RefreshInterval: 5e9,
		TestPath:        `/x?a=1&b="2"`,
	})
	_, body := get(t, h, http.MethodGet, "/", nil)
	for _, s := range []string{
		`<title>Jobs &lt;&#34;prod&#34;&gt;</title>`,
		`content="api/"`,
		`content="5000"`,
		`value="/x?a=1&amp;b=&#34;2&#34;"`,
	} {
		if !strings.Contains(body, s) {
			t.Errorf("page lacks %s", s)
		}
	}
	_, body = get(t, trigger.Dashboard("", &trigger.DashboardOptions{HideTestForm: true}), http.MethodGet, "/", nil)
	if strings.Contains(body, `id="send-form"`) || !strings.Contains(body, `content="/tasks/"`) {
		t.Errorf("HideTestForm or the default API path not honoured")
	}
}

// The dashboard is mounted next to the task API, under any prefix, behind
// the application's authentication.
func ExampleDashboard() {
	mux := http.NewServeMux()
	// mux.Handle("/tasks/", http.StripPrefix("/tasks", trigger.TaskAPI(db, nil)))
	mux.Handle("/dashboard/", http.StripPrefix("/dashboard", trigger.Dashboard("/tasks/", &trigger.DashboardOptions{
		Title:    "Video jobs",
		TestPath: "/videos/demo/transcode",
	})))

	for _, path := range []string{"/dashboard/", "/dashboard/app.js", "/dashboard/app.css", "/dashboard/secret.txt"} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		fmt.Println(path, rec.Code, rec.Header().Get("Content-Type"))
	}
	// Output:
	// /dashboard/ 200 text/html; charset=utf-8
	// /dashboard/app.js 200 text/javascript; charset=utf-8
	// /dashboard/app.css 200 text/css; charset=utf-8
	// /dashboard/secret.txt 404 text/plain; charset=utf-8
}
