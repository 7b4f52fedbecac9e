// Package browsertest drives the task dashboard (trigger.Dashboard) in a
// real headless Chromium through chromedp. It is its own module, so that
// the core module never depends on a browser driver:
//
//	cd internal/browsertest && go test -count=1 ./...
//
// The test needs Debian's Chromium (apt-get install -y chromium); it fails,
// never skips, when the browser cannot start. CHROMIUM names another
// browser binary. Screenshots go to the directory OFFLOAD_SCREENSHOTS, or
// to a temporary one.
package browsertest
