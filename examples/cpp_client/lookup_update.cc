// A minimal C++ client for the embps parameter-shard gRPC API (protos/embps/v1/ps_shard.proto).
//
//   lookup_update <host:port>
//
// Creates table "cpp_demo", assigns three rows, applies one SGD update, looks the rows up again and
// checks every value; also checks that an unknown table is NOT_FOUND.  Prints "cpp client: OK" and
// exits 0, or prints each mismatch and exits 1.
//
// Keys travel as little-endian uint64 and rows/gradients as little-endian float32, packed into
// `bytes` fields: on a little-endian host a batch is a single memcpy.

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "embps/v1/ps_shard.grpc.pb.h"

namespace v1 = embps::v1;

static_assert(sizeof(float) == 4, "float32 expected");

namespace {

constexpr char kTable[] = "cpp_demo";
constexpr uint32_t kDim = 8;
constexpr float kLr = 0.5f;

int failures = 0;

void Fail(const std::string& what) {
  std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  ++failures;
}

template <typename T>
std::string Pack(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

std::vector<float> UnpackFloats(const std::string& bytes) {
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

// The row assigned to key k: column j holds k*0.25 + j*0.01.
float Initial(uint64_t key, uint32_t j) { return key * 0.25f + j * 0.01f; }

// Returns true if the call succeeded; otherwise reports the status as a failure.
bool Ok(const grpc::Status& status, const char* call) {
  if (status.ok()) return true;
  Fail(std::string(call) + " failed: code " + std::to_string(status.error_code()) + ": " +
       status.error_message());
  return false;
}

std::unique_ptr<grpc::ClientContext> Context() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return ctx;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <host:port>\n", argv[0]);
    return 2;
  }
  auto channel = grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials());
  auto stub = v1::ParameterShard::NewStub(channel);

  // CreateTable: dim 8, SGD lr 0.5, zero initializer; idempotent so the program can be re-run.
  {
    v1::CreateTableRequest req;
    req.set_name(kTable);
    req.set_if_not_exists(true);
    v1::TableSpec* spec = req.mutable_spec();
    spec->set_dim(kDim);
    spec->set_capacity(1000);
    spec->mutable_optimizer()->set_kind(v1::OPTIMIZER_KIND_SGD);
    spec->mutable_optimizer()->set_lr(kLr);
    spec->mutable_initializer()->set_kind(v1::INITIALIZER_KIND_ZEROS);
    v1::TableInfo info;
    if (!Ok(stub->CreateTable(Context().get(), req, &info), "CreateTable")) return 1;
    if (info.spec().dim() != kDim) Fail("CreateTable returned dim " + std::to_string(info.spec().dim()));
    if (info.spec().optimizer().kind() != v1::OPTIMIZER_KIND_SGD)
      Fail("CreateTable returned optimizer " + v1::OptimizerKind_Name(info.spec().optimizer().kind()));
    // missing_keys was left UNSPECIFIED: the shard took the default and says which it is.
    if (info.spec().missing_keys() != v1::MISSING_KEYS_INITIALIZE)
      Fail("CreateTable returned missing_keys " + v1::MissingKeys_Name(info.spec().missing_keys()));
  }

  // Assign keys 1, 2, 3.
  {
    std::vector<uint64_t> keys = {1, 2, 3};
    std::vector<float> rows;
    for (uint64_t k : keys)
      for (uint32_t j = 0; j < kDim; ++j) rows.push_back(Initial(k, j));
    v1::AssignRequest req;
    req.set_table(kTable);
    req.set_keys(Pack(keys));
    req.set_rows(Pack(rows));
    v1::AssignResponse resp;
    if (!Ok(stub->Assign(Context().get(), req, &resp), "Assign")) return 1;
  }

  // Update keys 2, 3, 2 with gradient 1.0: key 2's two gradients are summed, so it moves by
  // -lr*2 = -1.0 and key 3 by -lr = -0.5.
  {
    std::vector<uint64_t> keys = {2, 3, 2};
    std::vector<float> grads(keys.size() * kDim, 1.0f);
    v1::UpdateRequest req;
    req.set_table(kTable);
    req.set_keys(Pack(keys));
    req.set_grads(Pack(grads));
    v1::UpdateResponse resp;
    if (!Ok(stub->Update(Context().get(), req, &resp), "Update")) return 1;
  }

  // Lookup 3, 1, 2 and the never-written 99 (zero row, found = 0).
  {
    std::vector<uint64_t> keys = {3, 1, 2, 99};
    v1::LookupRequest req;
    req.set_table(kTable);
    req.set_keys(Pack(keys));
    v1::LookupResponse resp;
    if (!Ok(stub->Lookup(Context().get(), req, &resp), "Lookup")) return 1;
    std::vector<float> rows = UnpackFloats(resp.rows());
    if (rows.size() != keys.size() * kDim || resp.found().size() != keys.size()) {
      Fail("Lookup returned " + std::to_string(resp.rows().size()) + " row bytes and " +
           std::to_string(resp.found().size()) + " found bytes for " + std::to_string(keys.size()) +
           " keys");
    } else {
      for (size_t i = 0; i < keys.size(); ++i) {
        const uint64_t k = keys[i];
        const float shift = k == 2 ? -1.0f : k == 3 ? -0.5f : 0.0f;
        const bool present = k != 99;
        if (resp.found()[i] != (present ? 1 : 0))
          Fail("key " + std::to_string(k) + ": found = " + std::to_string(int(resp.found()[i])));
        for (uint32_t j = 0; j < kDim; ++j) {
          const float want = present ? Initial(k, j) + shift : 0.0f;
          const float got = rows[i * kDim + j];
          if (std::fabs(got - want) > 1e-5f)
            Fail("key " + std::to_string(k) + " column " + std::to_string(j) + ": got " +
                 std::to_string(got) + ", want " + std::to_string(want));
        }
      }
    }
  }

  // DescribeTable: the lookup of key 99 must not have added a row.
  {
    v1::DescribeTableRequest req;
    req.set_table(kTable);
    v1::TableInfo info;
    if (Ok(stub->DescribeTable(Context().get(), req, &info), "DescribeTable") && info.rows() != 3)
      Fail("DescribeTable rows = " + std::to_string(info.rows()) + ", want 3");
  }

  // An unknown table is NOT_FOUND.
  {
    v1::LookupRequest req;
    req.set_table("cpp_demo_no_such_table");
    req.set_keys(Pack(std::vector<uint64_t>{1}));
    v1::LookupResponse resp;
    grpc::Status status = stub->Lookup(Context().get(), req, &resp);
    if (status.error_code() != grpc::StatusCode::NOT_FOUND)
      Fail("Lookup on an unknown table: code " + std::to_string(status.error_code()) +
           " (want NOT_FOUND = 5): " + status.error_message());
  }

  if (failures) {
    std::fprintf(stderr, "cpp client: %d mismatch(es)\n", failures);
    return 1;
  }
  std::printf("cpp client: OK\n");
  return 0;
}
