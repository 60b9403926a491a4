require ["body", "fileinto"];
if body :raw :contains "=E2=80=94" { fileinto "RawQP"; }
if body :raw :contains "JVBERi0x" { fileinto "RawBase64"; }
if body :raw :contains "réunion" { fileinto "Raw8bit"; }
