package trigger

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// Error codes in JSON error bodies. They are stable: clients may branch on them.
const (
	CodeInvalidInvocationType  = "InvalidInvocationType"  // 400
	CodeInvalidAsyncDelay      = "InvalidAsyncDelay"      // 400
	CodeInvalidTaskID          = "InvalidTaskId"          // 400
	CodeInvalidIdempotencyKey  = "InvalidIdempotencyKey"  // 400
	CodeInvalidArgument        = "InvalidArgument"        // 400: a task API parameter
	CodeForbidden              = "Forbidden"              // 403: the task API's Authorize hook said no, or a browser's cross-origin POST
	CodeTaskNotFound           = "TaskNotFound"           // 404
	CodeNotFound               = "NotFound"               // 404: no task API route at that path
	CodeMethodNotAllowed       = "MethodNotAllowed"       // 405: a task API route, another method
	CodeTaskAlreadyExists      = "TaskAlreadyExists"      // 409
	CodeTaskFinished           = "TaskFinished"           // 409: stop of a finished task
	CodeTaskNotRetryable       = "TaskNotRetryable"       // 409: retry of a task that is not Failed, Stopped, Expired or Invalid, or whose target no scheduler runs
	CodeRequestTooLarge        = "RequestTooLarge"        // 413
	CodeIdempotencyKeyMismatch = "IdempotencyKeyMismatch" // 422
	CodeQueueFull              = "QueueFull"              // 503
	CodeShuttingDown           = "ShuttingDown"           // 503
	CodeStoreUnavailable       = "StoreUnavailable"       // 503: the store failed (disk full, I/O error)
	CodeInternal               = "InternalError"          // 500
)

type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Encoded before the status is sent, so that a value JSON cannot
		// carry is a 500 with a body, not a 200 without one.
		status = http.StatusInternalServerError
		buf.Reset()
		_ = enc.Encode(errorBody{Code: CodeInternal, Message: "encoding the answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, errorBody{Code: code, Message: message})
}

// writeUnavailable answers 503 with Retry-After, so that well-behaved
// clients come back instead of losing the request.
func writeUnavailable(w http.ResponseWriter, retryAfter time.Duration, code, message string) {
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(retryAfter.Round(time.Second)/time.Second))))
	writeError(w, http.StatusServiceUnavailable, code, message)
}
