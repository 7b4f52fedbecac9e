package destination_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/offload-go/offload/destination"
)

func ExampleFunc() {
	// A Func is the simplest destination: the scheduler calls it with the
	// record of each finished task. Return an error to be called again
	// later, or destination.Permanent(err) to give up.
	notify := destination.Func(func(ctx context.Context, rec destination.Record) error {
		fmt.Printf("task %s of %s: %s after %d attempts\n",
			rec.RequestContext.RequestID, rec.RequestContext.FunctionArn,
			rec.RequestContext.Condition, rec.RequestContext.ApproximateInvokeCount)
		if rec.ResponseContext.FunctionError != "" {
			fmt.Println("error:", rec.ResponseContext.FunctionError)
		}
		return nil
	})

	// Set it as invoke.Policy.OnSuccess or OnFailure. Here we call it as
	// the scheduler would.
	err := notify.Deliver(context.Background(), destination.Record{
		Version: destination.Version,
		RequestContext: destination.RequestContext{
			RequestID:              "01M8A5JMZP442HFYP7HK6MA4SD",
			FunctionArn:            "transcode",
			Condition:              destination.RetriesExhausted,
			ApproximateInvokeCount: 4,
		},
		ResponseContext: destination.ResponseContext{
			StatusCode:    500,
			FunctionError: "handler answered 500 Internal Server Error (retries exhausted: 3)",
		},
	})
	fmt.Println("delivered:", err == nil)
	// Output:
	// task 01M8A5JMZP442HFYP7HK6MA4SD of transcode: RetriesExhausted after 4 attempts
	// error: handler answered 500 Internal Server Error (retries exhausted: 3)
	// delivered: true
}

func ExampleSign() {
	secret := []byte("a shared secret, 16+ bytes")
	body := []byte(`{"version":"1.0"}`)
	sent := time.Unix(1_790_000_000, 0)

	// The webhook sends this as the X-Offload-Signature header.
	header := destination.Sign(secret, sent, body)
	fmt.Println(header)

	// The value is HMAC-SHA256 over "<t>.<body>", so a receiver in any
	// language can check it. In Go, the receiver checks it against the
	// body it read; in a handler,
	// destination.VerifyRequest does both.
	fmt.Println(destination.Verify(secret, header, body, 5*time.Minute, sent.Add(time.Minute)))

	tampered := []byte(`{"version":"2.0"}`)
	err := destination.Verify(secret, header, tampered, 5*time.Minute, sent.Add(time.Minute))
	fmt.Println(errors.Is(err, destination.ErrSignature), err)

	err = destination.Verify(secret, header, body, 5*time.Minute, sent.Add(time.Hour))
	fmt.Println(errors.Is(err, destination.ErrSignature), err)
	// Output:
	// t=1790000000,v1=3b47bf8ce6df06a9251cc732bff4769e08c09059a1158b72b4ee8c0c2ca978ed
	// <nil>
	// true destination: bad webhook signature: signature does not match
	// true destination: bad webhook signature: timestamp outside the 5m0s tolerance
}

// A webhook destination and the receiving end: the receiver checks each
// POST's signature with VerifyRequest before it trusts the record.
func ExampleNewWebhook() {
	secret := []byte("a shared secret, 16+ bytes") // both sides read it from their secret store

	// The receiving service (here in the same process, for the example).
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec, err := destination.VerifyRequest(r, secret, 0)
		if err != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		fmt.Printf("received %s of task %s\n", rec.RequestContext.Condition, rec.RequestContext.RequestID)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer receiver.Close()

	// The sending side: set hook as invoke.Policy.OnSuccess (or
	// OnFailure, or both with Multi); the scheduler calls Deliver.
	hook, err := destination.NewWebhook(receiver.URL+"/hooks/transcoded", secret, nil)
	if err != nil {
		log.Fatal(err)
	}
	rec := destination.Record{
		Version:        destination.Version,
		RequestContext: destination.RequestContext{RequestID: "01M8A5JMZP442HFYP7HK6MA4SD", FunctionArn: "transcode", Condition: destination.Success},
	}
	fmt.Println("delivered:", hook.Deliver(context.Background(), rec) == nil)

	// A sender with another secret is refused, and Deliver says so.
	forger, _ := destination.NewWebhook(receiver.URL+"/hooks/transcoded", []byte("not the shared secret"), nil)
	err = forger.Deliver(context.Background(), rec)
	fmt.Println("forged one refused:", strings.HasSuffix(err.Error(), "answered 401 Unauthorized"))

	// A webhook is safe to log: a token in its URL and the secret stay out.
	slack, _ := destination.NewWebhook("https://hooks.slack.com/services/T0/B0/XXXXSECRET", secret, nil)
	fmt.Println(slack)
	// Output:
	// received Success of task 01M8A5JMZP442HFYP7HK6MA4SD
	// delivered: true
	// forged one refused: true
	// webhook https://hooks.slack.com
}
