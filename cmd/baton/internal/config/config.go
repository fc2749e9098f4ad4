// Package config reads the configuration every baton command shares the
// machinery for: defaults, then a TOML file, then BATON_ variables, then
// flags, with unknown keys refused. It also holds the sections more than
// one command has: [grpc_server] with its TLS files, [log], and the
// client's [client].
package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// EnvPrefix starts every environment variable that configures Baton.
const EnvPrefix = "BATON_"

// envIgnored are BATON_ variables that are not configuration: jobs see
// BATON_JOB_ID, and a job may well run the baton CLI.
var envIgnored = []string{"BATON_JOB_ID", "BATON_CONFIG"}

// Duration is a time.Duration written as a string ("10s") in config files.
type Duration time.Duration

// UnmarshalText parses "10s", "5m", "24h".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: use a number with a unit, like \"10s\" or \"24h\"", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration back as "10s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// ByteSize is a size in bytes, written as a number or with a unit ("64MiB").
type ByteSize int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

// UnmarshalText parses "1048576", "64MiB", "10MB".
func (s *ByteSize) UnmarshalText(b []byte) error {
	text := strings.TrimSpace(string(b))
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(text, u.suffix) {
			text, mult = strings.TrimSpace(strings.TrimSuffix(text, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return fmt.Errorf("size %q: use bytes or a unit, like \"64MiB\"", b)
	}
	*s = ByteSize(n * mult)
	return nil
}

// MarshalText writes the size in the largest exact binary unit.
func (s ByteSize) MarshalText() ([]byte, error) {
	for i := 3; i >= 0; i-- {
		u := sizeUnits[i]
		if s != 0 && int64(s)%u.mult == 0 {
			return []byte(strconv.FormatInt(int64(s)/u.mult, 10) + u.suffix), nil
		}
	}
	return []byte(strconv.FormatInt(int64(s), 10)), nil
}

// Source says where a command's configuration comes from. Later
// sources win: defaults, then the TOML file, then BATON_ variables, then the
// flags given on the command line.
type Source struct {
	File     string
	Flags    *pflag.FlagSet
	FlagKeys map[string]string // flag name → config key
	// Environ replaces the process environment when not nil.
	Environ []string
	// Others are the configurations (struct values) of the binary's other
	// commands: their BATON_ variables are skipped, not refused.
	Others []any
}

// Load fills out (a pointer to a struct with koanf tags, already holding the
// defaults) from the sources. Unknown keys in the file or the environment
// are errors that name the key.
func Load(out any, src Source) (*koanf.Koanf, error) {
	k := koanf.New(".")
	if err := k.Load(structProvider{out}, nil); err != nil {
		return nil, fmt.Errorf("defaults: %w", err)
	}
	leaves := LeafKeys(reflect.TypeOf(out).Elem(), "")

	if src.File != "" {
		fk := koanf.New(".")
		if err := fk.Load(file.Provider(src.File), toml.Parser()); err != nil {
			return nil, fmt.Errorf("config file %s: %w", src.File, err)
		}
		if err := resolvePaths(fk, leaves, src.File); err != nil {
			return nil, err
		}
		if err := k.Merge(fk); err != nil {
			return nil, fmt.Errorf("config file %s: %w", src.File, err)
		}
	}

	envKeys := make(map[string]string, len(leaves))
	for key := range leaves {
		envKeys[EnvPrefix+strings.ToUpper(strings.NewReplacer(".", "_").Replace(key))] = key
	}
	var unknownEnv []string
	environ := src.Environ
	if environ == nil {
		environ = os.Environ()
	}
	err := k.Load(env.Provider(".", env.Opt{
		Prefix:      EnvPrefix,
		EnvironFunc: func() []string { return environ },
		TransformFunc: func(name, value string) (string, any) {
			key, ok := envKeys[name]
			if !ok {
				if !slices.Contains(envIgnored, name) && !otherConfigEnv(name, src.Others) {
					unknownEnv = append(unknownEnv, name)
				}
				return "", nil
			}
			return key, envValue(leaves[key], value)
		},
	}), nil)
	if err != nil {
		return nil, fmt.Errorf("environment: %w", err)
	}
	if len(unknownEnv) > 0 {
		slices.Sort(unknownEnv)
		return nil, fmt.Errorf("unknown environment variable %s (see the configuration reference in the README)", strings.Join(unknownEnv, ", "))
	}

	if src.Flags != nil {
		err := k.Load(posflag.ProviderWithFlag(src.Flags, ".", k, func(f *pflag.Flag) (string, any) {
			key, ok := src.FlagKeys[f.Name]
			if !ok || !f.Changed {
				return "", nil
			}
			return key, posflag.FlagVal(src.Flags, f)
		}), nil)
		if err != nil {
			return nil, fmt.Errorf("flags: %w", err)
		}
	}

	if err := unmarshalStrict(k, out); err != nil {
		return nil, err
	}
	return k, nil
}

// envValue turns an environment string into what the key's field holds:
// lists are comma-separated, maps are k=v pairs separated by commas.
// resolvePaths makes the relative paths a config file gives (the keys
// ending in _file or _dir) relative to the file's directory, as kubectl
// does with a kubeconfig: a daemon started from another directory reads
// the same files. Paths from the environment and flags stay relative to
// the working directory, as a shell user expects.
func resolvePaths(fk *koanf.Koanf, leaves map[string]reflect.Type, path string) error {
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	for key, t := range leaves {
		if t.Kind() != reflect.String || !(strings.HasSuffix(key, "_file") || strings.HasSuffix(key, "_dir")) || !fk.Exists(key) {
			continue
		}
		v, ok := fk.Get(key).(string)
		if !ok || v == "" || filepath.IsAbs(v) {
			continue
		}
		if err := fk.Set(key, filepath.Join(dir, v)); err != nil {
			return fmt.Errorf("config file %s: %s: %w", path, key, err)
		}
	}
	return nil
}

func envValue(t reflect.Type, value string) any {
	switch t.Kind() {
	case reflect.Slice:
		if value == "" {
			return []string{}
		}
		return strings.Split(value, ",")
	case reflect.Map:
		m := map[string]any{}
		for pair := range strings.SplitSeq(value, ",") {
			if k, v, ok := strings.Cut(pair, "="); ok {
				m[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
		return m
	}
	return value
}

// unmarshalStrict decodes k into out and fails on keys out does not have.
func unmarshalStrict(k *koanf.Koanf, out any) error {
	var md mapstructure.Metadata
	err := k.UnmarshalWithConf("", out, koanf.UnmarshalConf{
		Tag: "koanf",
		DecoderConfig: &mapstructure.DecoderConfig{
			DecodeHook: mapstructure.ComposeDecodeHookFunc(
				mapstructure.TextUnmarshallerHookFunc(),
				mapstructure.StringToSliceHookFunc(","),
			),
			Metadata:         &md,
			Result:           out,
			TagName:          "koanf",
			WeaklyTypedInput: true,
			ErrorUnused:      true,
		},
	})
	if err != nil {
		return fmt.Errorf("configuration: %w", cleanDecodeError(err))
	}
	return nil
}

// cleanDecodeError keeps mapstructure's "invalid keys" message readable.
func cleanDecodeError(err error) error {
	msg := err.Error()
	if i := strings.Index(msg, "has invalid keys: "); i >= 0 {
		return errors.New("unknown key " + msg[i+len("has invalid keys: "):])
	}
	return err
}

// LeafKeys lists the dotted keys of a config struct, with their field types.
// Maps are leaves: their own keys are free-form.
func LeafKeys(t reflect.Type, prefix string) map[string]reflect.Type {
	keys := map[string]reflect.Type{}
	for f := range t.Fields() {
		tag := f.Tag.Get("koanf")
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		if f.Type.Kind() == reflect.Struct {
			for k, v := range LeafKeys(f.Type, key+".") {
				keys[k] = v
			}
			continue
		}
		keys[key] = f.Type
	}
	return keys
}

// structProvider loads a struct's current values as koanf defaults.
type structProvider struct{ v any }

func (p structProvider) ReadBytes() ([]byte, error) { return nil, errors.New("not supported") }

func (p structProvider) Read() (map[string]any, error) {
	return StructMap(reflect.ValueOf(p.v).Elem()), nil
}

// StructMap turns a config struct into the nested map its TOML file
// holds, keyed by the koanf tags, with values in their text form.
func StructMap(v reflect.Value) map[string]any {
	out := map[string]any{}
	t := v.Type()
	for i := range t.NumField() {
		tag := t.Field(i).Tag.Get("koanf")
		if tag == "" || tag == "-" {
			continue
		}
		fv := v.Field(i)
		switch {
		case fv.Kind() == reflect.Struct:
			out[tag] = StructMap(fv)
		case fv.Kind() == reflect.Map:
			m := map[string]any{}
			iter := fv.MapRange()
			for iter.Next() {
				m[iter.Key().String()] = iter.Value().Interface()
			}
			out[tag] = m
		default:
			if tm, ok := fv.Interface().(interface{ MarshalText() ([]byte, error) }); ok {
				b, _ := tm.MarshalText()
				out[tag] = string(b)
				continue
			}
			out[tag] = fv.Interface()
		}
	}
	return out
}

// Flag is a command-line flag that sets one configuration key.
type Flag struct{ Name, Key, Usage string }

// FlagKeys maps flag names to configuration keys.
func FlagKeys(flags []Flag) map[string]string {
	keys := make(map[string]string, len(flags))
	for _, f := range flags {
		keys[f.Name] = f.Key
	}
	return keys
}

// BindFlags adds --config and flags to a daemon command; the returned
// function loads the configuration into cfg, which holds the defaults.
// others are as in Source.
func BindFlags(cmd *cobra.Command, flags []Flag, others []any) func(cfg any) error {
	var file string
	fs := cmd.Flags()
	fs.StringVar(&file, "config", os.Getenv("BATON_CONFIG"), "TOML config file")
	for _, f := range flags {
		fs.String(f.Name, "", f.Usage+" ("+f.Key+")")
	}
	keys := FlagKeys(flags)
	return func(cfg any) error {
		_, err := Load(cfg, Source{File: file, Flags: fs, FlagKeys: keys, Others: others})
		return err
	}
}

// otherConfigEnv reports whether name is the environment variable of a key
// of one of the other commands' configurations. A shell may export variables for
// several commands (the worker's and the client's); each command skips the
// others' but still refuses names no command knows.
func otherConfigEnv(name string, others []any) bool {
	for _, cfg := range others {
		for key := range LeafKeys(reflect.TypeOf(cfg), "") {
			if EnvPrefix+strings.ToUpper(strings.ReplaceAll(key, ".", "_")) == name {
				return true
			}
		}
	}
	return false
}

// PrintTOML writes a config struct (a pointer) as TOML, in the form its
// file takes.
func PrintTOML(w io.Writer, cfg any) error {
	body, err := toml.Parser().Marshal(StructMap(reflect.ValueOf(cfg).Elem()))
	if err != nil {
		return fmt.Errorf("config print: %w", err)
	}
	_, err = w.Write(body)
	return err
}

// StateDir is where daemons keep their data by default.
func StateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "baton")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "baton")
	}
	return filepath.Join(os.TempDir(), "baton")
}
