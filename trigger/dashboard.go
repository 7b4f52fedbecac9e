package trigger

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultRefreshInterval is how often the dashboard refreshes itself while
// live refresh is on.
const DefaultRefreshInterval = 2 * time.Second

// DashboardOptions configures Dashboard. A nil *DashboardOptions means all
// defaults.
type DashboardOptions struct {
	// Title is the page's title and heading. Defaults to "offload tasks".
	Title string
	// RefreshInterval is how often the page fetches the task API again
	// while live refresh is on. Defaults to DefaultRefreshInterval (2 s).
	RefreshInterval time.Duration
	// TestPath fills the path field of the form that sends a test async
	// request, for example "/work?ms=3000". If empty, the field starts
	// empty.
	TestPath string
	// HideTestForm removes the form that sends test async requests.
	HideTestForm bool
}

//go:embed dashboard/index.html dashboard/app.js dashboard/app.css
var dashboardFS embed.FS

var dashboardIndex = template.Must(template.ParseFS(dashboardFS, "dashboard/index.html"))

// dashboardCSP is the Content-Security-Policy of every dashboard file: the
// page runs only its own script and style, talks only to its own origin,
// and cannot be framed.
const dashboardCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// dashboardFile is one file the dashboard serves.
type dashboardFile struct {
	body        []byte
	contentType string
	etag        string
}

// Dashboard returns the dashboard page: a small HTML and JavaScript
// application, embedded in the binary, that lists, filters, inspects,
// stops and retries tasks through the task API mounted at apiPath (the
// URL path of TaskAPI, such as "/tasks/"; if empty, "/tasks/"), shows the
// task counts per target and status, and sends test async requests. It
// loads one page of tasks at a time, so it stays fast however many tasks
// the queue holds.
//
// Mount it under any prefix, behind the application's authentication
// (the page calls the API with the browser's credentials):
//
//	mux.Handle("/tasks/", http.StripPrefix("/tasks", trigger.TaskAPI(db, nil)))
//	mux.Handle("/dashboard/", http.StripPrefix("/dashboard", trigger.Dashboard("/tasks/", nil)))
//
// Every answer carries a strict Content-Security-Policy (scripts, styles
// and connections from the same origin only; no framing) and
// X-Content-Type-Options: nosniff, and the page renders every value from
// the API as text. Paths other than its own files are answered 404.
func Dashboard(apiPath string, opts *DashboardOptions) http.Handler {
	var o DashboardOptions
	if opts != nil {
		o = *opts
	}
	o.Title = cmp.Or(o.Title, "offload tasks")
	if o.RefreshInterval <= 0 {
		o.RefreshInterval = DefaultRefreshInterval
	}
	apiPath = cmp.Or(apiPath, "/tasks/")
	if !strings.HasSuffix(apiPath, "/") {
		apiPath += "/"
	}

	var index bytes.Buffer
	err := dashboardIndex.Execute(&index, struct {
		Title, API, TestPath, Refresh string
		TestForm                      bool
	}{
		Title:    o.Title,
		API:      apiPath,
		TestPath: o.TestPath,
		Refresh:  strconv.FormatInt(o.RefreshInterval.Milliseconds(), 10),
		TestForm: !o.HideTestForm,
	})
	if err != nil {
		panic("trigger: dashboard template: " + err.Error()) // not reached: the template is fixed
	}
	d := &dashboard{files: map[string]*dashboardFile{}}
	add := func(name, contentType string, body []byte) {
		sum := sha256.Sum256(body)
		d.files[name] = &dashboardFile{body: body, contentType: contentType, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
	}
	add("/", "text/html; charset=utf-8", index.Bytes())
	d.files["/index.html"] = d.files["/"]
	for name, ct := range map[string]string{"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"} {
		body, err := fs.ReadFile(dashboardFS, "dashboard/"+name)
		if err != nil {
			panic("trigger: dashboard: " + err.Error()) // not reached: the files are embedded
		}
		add("/"+name, ct, body)
	}
	return d
}

type dashboard struct {
	files map[string]*dashboardFile
}

func (d *dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", dashboardCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	if r.URL.Path == "" {
		// Mounted as "/dashboard" with the prefix stripped: the relative
		// links of the page need the slash.
		u, err := url.ParseRequestURI(r.RequestURI)
		if err != nil || u.Path == "" {
			http.NotFound(w, r)
			return
		}
		http.Redirect(w, r, u.Path+"/", http.StatusMovedPermanently)
		return
	}
	f := d.files[r.URL.Path]
	if f == nil {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h.Set("Content-Type", f.contentType)
	h.Set("ETag", f.etag)
	h.Set("Cache-Control", "no-cache") // revalidate: a new binary may serve new files
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
}
