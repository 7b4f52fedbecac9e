// Package trigger is offload's HTTP face: middleware that answers requests
// marked async with 202 Accepted once they are durably stored, and the task
// API that lets clients and operators look tasks up, list, stop and retry
// them.
//
// A request is async when it carries `X-Fc-Invocation-Type: Async` (any
// case) or `Prefer: respond-async` (RFC 7240). Anything else passes through
// to the handler untouched, so one route serves both:
//
//	tr := trigger.New(sched, &trigger.Options{TaskPath: "/tasks/"})
//	mux.Handle("POST /videos/{name}/transcode", tr.Async("transcode", transcode, &invoke.Policy{Concurrency: 4}))
//	mux.Handle("/tasks/", http.StripPrefix("/tasks", trigger.TaskAPI(db, nil)))
//
// Dashboard serves a page over the task API, to watch, filter, stop, retry
// and send tasks from a browser:
//
//	mux.Handle("/dashboard/", http.StripPrefix("/dashboard", trigger.Dashboard("/tasks/", nil)))
//
// Errors are JSON objects {"code": "...", "message": "..."} whose code is
// stable; see the Code constants.
package trigger
