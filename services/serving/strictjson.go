package serving

import (
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// strictJSON is Connect's JSON codec without its leniency: an unknown field
// or an unknown enum name in a request is an error naming it (Connect
// answers invalid_argument), not something silently dropped. A typo such
// as {"states":["RUNNING"]} on ListJobs would otherwise list every job,
// and a script that stops "running" jobs would stop them all. Binary
// protobuf keeps protobuf's own rules for unknown fields.
type strictJSON struct {
	name string
}

// strictJSONCodecs replace both names Connect registers its JSON codec
// under.
func strictJSONCodecs() []connect.HandlerOption {
	return []connect.HandlerOption{
		connect.WithCodec(strictJSON{name: "json"}),
		connect.WithCodec(strictJSON{name: "json; charset=utf-8"}),
	}
}

func (c strictJSON) Name() string { return c.name }

func (strictJSON) IsBinary() bool { return false }

func (c strictJSON) Marshal(msg any) ([]byte, error) { return c.MarshalAppend(nil, msg) }

func (strictJSON) MarshalAppend(dst []byte, msg any) ([]byte, error) {
	pm, ok := msg.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a protobuf message", msg)
	}
	return protojson.MarshalOptions{}.MarshalAppend(dst, pm)
}

func (strictJSON) Unmarshal(data []byte, msg any) error {
	pm, ok := msg.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a protobuf message", msg)
	}
	if len(data) == 0 {
		return errors.New("an empty body is not a JSON object; send {} for an empty request")
	}
	return protojson.UnmarshalOptions{}.Unmarshal(data, pm)
}
