// Package chaos holds offload's whole-stack fault tests: a real server
// (queue, scheduler, trigger, a webhook destination) runs in a child
// process that the tests kill with SIGKILL, stop with SIGTERM under load,
// or starve of disk space, while clients keep sending async requests. They
// check the promise behind every 202: the request runs at least once and
// its result is delivered.
//
// Run them with `go test ./internal/chaos/ -v` to see the reports.
package chaos
