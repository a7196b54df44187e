package oci

// Error codes of the OCI distribution spec ("Error Codes"), as they go in an error body's
// "code" field; the last group are distribution's (docker/distribution registry/api/errcode
// and registry/api/v2), which clients and registries use too.
const (
	CodeBlobUnknown         = "BLOB_UNKNOWN"
	CodeDigestInvalid       = "DIGEST_INVALID"
	CodeManifestInvalid     = "MANIFEST_INVALID"
	CodeManifestUnknown     = "MANIFEST_UNKNOWN"
	CodeNameInvalid         = "NAME_INVALID"
	CodeNameUnknown         = "NAME_UNKNOWN"
	CodeUnauthorized        = "UNAUTHORIZED"
	CodeDenied              = "DENIED"
	CodeUnsupported         = "UNSUPPORTED"
	CodeTooManyRequests     = "TOOMANYREQUESTS"
	CodeBlobUploadInvalid   = "BLOB_UPLOAD_INVALID"
	CodeBlobUploadUnknown   = "BLOB_UPLOAD_UNKNOWN"
	CodeManifestBlobUnknown = "MANIFEST_BLOB_UNKNOWN"
	CodeSizeInvalid         = "SIZE_INVALID"

	CodePaginationNumberInvalid = "PAGINATION_NUMBER_INVALID"
	CodeUnknown                 = "UNKNOWN"
	CodeUnavailable             = "UNAVAILABLE"
	CodeRangeInvalid            = "RANGE_INVALID"
	CodeTagInvalid              = "TAG_INVALID"
)
